"""Time the default pipeline under `dvc repro` on this machine: wall time and peak RSS per stage.

Runs in a fresh temp git repo (a copy of this project's pipeline), one `dvc repro --single-item`
per stage so each is measured alone, then a no-op `dvc repro`. Usage:

    python benchmarks/pipeline.py [--profile default] [-S finetune.labels_per_class=10 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ["dvc.yaml", "params.yaml", "prefine", "tasks", ".dvc/config", ".dvc/.gitignore"]
STAGES = ["ingest", "pretrain", "checkpoint", "finetune", "evaluate"]


def copy_project(dst: Path, profile: str, overrides: list[str]) -> None:
    for name in PROJECT:
        src, out = ROOT / name, dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = profile
    for item in overrides:
        key, value = item.split("=", 1)
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the largest process the command started)."""
    start = time.perf_counter()
    probe = [sys.executable, "-c", (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    ), *cmd]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(probe, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return wall, int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value in params.yaml")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(prefix="prefine-bench-") as tmp:
        repo = Path(tmp)
        copy_project(repo, args.profile, args.overrides)
        rows = [(stage, *timed([*dvc, "repro", "--single-item", stage], repo)) for stage in STAGES]
        noop, _ = timed([*dvc, "repro"], repo)
        metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    total = sum(wall for _, wall, _ in rows)
    peak = max(rss for *_, rss in rows)
    print(f"profile {args.profile} {' '.join(args.overrides)}")
    print(f"{'stage':<12}{'wall s':>8}{'peak RSS MB':>13}")
    for stage, wall, rss in rows:
        print(f"{stage:<12}{wall:>8.1f}{rss:>13.0f}")
    print(f"{'total':<12}{total:>8.1f}{peak:>13.0f}")
    print(f"no-op dvc repro: {noop:.1f} s")
    print(f"labels/class {metrics['labels_per_class']} ({metrics['strategy']}): "
          f"pretrained {metrics['pretrained']['accuracy']:.4f}, scratch {metrics['scratch']['accuracy']:.4f}, "
          f"gain {metrics['gain_over_scratch']['accuracy']:+.4f}")


if __name__ == "__main__":
    main()
