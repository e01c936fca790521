"""Time the default pipeline under `dvc repro` on this machine: wall time and peak RSS per stage.

Runs in a fresh temp git repo (a copy of this project's pipeline), one `dvc repro --single-item`
per stage so each is measured alone, then a no-op `dvc repro`, then (--budgets) a rerun per
other label budget. Usage:

    python benchmarks/pipeline.py [--profile default] [-S finetune.steps=600 ...] [--budgets 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
STAGES = ["ingest", "pretrain", "checkpoint", "finetune", "evaluate", "visualize"]

from projects import VENV_ENV, make_project  # noqa: E402

from flows.overrides import apply  # noqa: E402


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the largest process the command started)."""
    start = time.perf_counter()
    probe = [sys.executable, "-c", (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    ), *cmd]
    result = subprocess.run(probe, cwd=cwd, env=VENV_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr}")
    return wall, int(result.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="ingest.path")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value in params.yaml")
    parser.add_argument("--budgets", default="", help="more labels_per_class to rerun after, e.g. 10,50")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    with tempfile.TemporaryDirectory(prefix="prefine-bench-") as tmp:
        repo = make_project(Path(tmp) / "project", args.data, args.overrides, args.profile)
        rows = [(stage, *timed([*dvc, "repro", "--single-item", stage], repo)) for stage in STAGES]
        noop, _ = timed([*dvc, "repro"], repo)
        results = [json.loads((repo / "metrics/evaluate.json").read_text())]
        for budget in filter(None, args.budgets.split(",")):
            apply(repo, None, [f"finetune.labels_per_class={budget}"])
            timed([*dvc, "repro"], repo)
            results.append(json.loads((repo / "metrics/evaluate.json").read_text()))
    total = sum(wall for _, wall, _ in rows)
    peak = max(rss for *_, rss in rows)
    print(f"profile {args.profile} {' '.join(args.overrides)}")
    print(f"{'stage':<12}{'wall s':>8}{'peak RSS MB':>13}")
    for stage, wall, rss in rows:
        print(f"{stage:<12}{wall:>8.1f}{rss:>13.0f}")
    print(f"{'total':<12}{total:>8.1f}{peak:>13.0f}")
    print(f"no-op dvc repro: {noop:.1f} s")
    for m in results:
        print(f"labels/class {m['labels_per_class']} ({m['strategy']}): "
              f"pretrained {m['pretrained']['accuracy']:.4f}, scratch {m['scratch']['accuracy']:.4f}, "
              f"gain {m['gain_over_scratch']['accuracy']:+.4f}")


if __name__ == "__main__":
    main()
