"""What the remote path costs, on loopback (tests/fleet_parts.py: a Prefect server, SeaweedFS as
the S3 DVC remote, a bare git origin, `process` workers).

1. One unregistered run of the quick profile, locally (`prefine flow` in a checkout) and as a
   deployment run on an idle one-worker pool (fresh clone, pull, push): both wall times, and the
   remote pieces timed alone on the local run's outputs: `git clone --depth 1`, `dvc push
   --run-cache` to an empty prefix, `dvc pull --run-cache` into a fresh clone.
2. A 4-cell label-budget study (STUDY, on the test config TINY: quick with ingest.limit=600, 10
   fine-tuning steps, 1 pretraining epoch), started from a clone of a fresh origin by this
   process: its cells in clones here, then as deployment runs on one worker, then on two. Both
   workers are on this host, so their training stages share its one GPU slot.

    .venv/bin/python benchmarks/fleet.py [--data /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fleet_parts import (  # noqa: E402
    IDENTITY, KEYS, PREFINE, Storage, deploy, make_origin, prefect_server, run_all, seaweedfs, workers,
)
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402
from projects import dvc, git, make_project  # noqa: E402

from flows.study import label_budget_study  # noqa: E402

TINY = ["ingest.limit=600", "finetune.steps=10", "pretrain.epochs=1"]
STUDY = ["study.methods=[autoencoder, simclr]", "study.budgets=[1, 2]", "study.seeds=[0]"]


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def check(done: subprocess.CompletedProcess) -> None:
    if done.returncode:
        sys.exit(f"{' '.join(map(str, done.args))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def local_run(base: Path, data: Path, env: dict[str, str]) -> tuple[Path, float]:
    """A quick-profile checkout trained by `prefine flow` (no registration); it and the wall time."""
    checkout = make_project(base / "project", data)
    run = [*PREFINE, "flow", "--repo", str(checkout), "--no-register"]
    return checkout, timed(lambda: check(subprocess.run(run, env=env, capture_output=True, text=True)))


def remote_pieces(checkout: Path, base: Path, storage: Storage, env: dict[str, str]) -> dict[str, float]:
    """The remote path's steps on the local run's outputs: push them (and the run-cache) to an
    empty prefix, shallow-clone the checkout as a worker does, pull them into the clone."""
    git(checkout, "add", "-A")
    git(checkout, "commit", "-qm", "the local run")
    for args in (("remote", "add", "-d", "bench", f"{storage.bucket('prefine-bench')}/pieces"),
                 ("remote", "modify", "bench", "endpointurl", storage.endpoint)):
        check(dvc(checkout, *args))
    git(checkout, "add", ".dvc/config")
    git(checkout, "commit", "-qm", "the remote")
    dvc_run = [sys.executable, "-m", "dvc"]
    clone = base / "clone"
    return {
        "dvc push --run-cache": timed(lambda: check(subprocess.run(
            [*dvc_run, "push", "--run-cache"], cwd=checkout, env=env, capture_output=True, text=True))),
        "git clone --depth 1": timed(lambda: git(base, "clone", "-q", "--depth", "1", f"file://{checkout}", str(clone))),
        "dvc pull --run-cache": timed(lambda: check(subprocess.run(
            [*dvc_run, "pull", "--run-cache"], cwd=clone, env=env, capture_output=True, text=True))),
    }


def study_wall(base: Path, data: Path, storage: Storage, env: dict[str, str], count: int,
               name: str) -> tuple[float, str]:
    """Wall time and CSV table of the STUDY from a clone of a fresh origin and remote prefix:
    with `count` workers on a pool of their own, or with none, its cells in clones here."""
    origin = make_origin(base, data, storage, f"{storage.bucket('prefine-bench')}/{name}", TINY)
    clone = base / "study"
    git(base, "clone", "-q", origin.url, str(clone))
    with ExitStack() as stack, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        if count:
            deploy(env, name, origin)
            stack.enter_context(workers(env, name, base, count))
        deployment = "training/prefine-training" if count else None
        summary: dict = {}
        seconds = timed(lambda: summary.update(label_budget_study(repo=str(clone), overrides=STUDY,
                                                                  deployment=deployment)))
        return seconds, Path(summary["csv"]).read_text()


def one_run_wall(base: Path, data: Path, storage: Storage, env: dict[str, str]) -> float:
    """Wall time of one unregistered deployment run on an idle one-worker pool of its own."""
    origin = make_origin(base, data, storage, f"{storage.bucket('prefine-bench')}/one", [])
    deploy(env, "one", origin)
    with workers(env, "one", base, 1):
        return timed(lambda: run_all(env, [{"register_model": False}], timeout=3600))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefine-fleet-bench-") as tmp:
        folders = {name: Path(tmp) / name for name in ("prefect", "s3", "local", "one", "here", "pool-1", "pool-2")}
        for folder in folders.values():
            folder.mkdir()
        with prefect_server(folders["prefect"]) as api, seaweedfs(folders["s3"]) as storage:
            env = {**api, **KEYS, **IDENTITY, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            os.environ.update(env)  # the study runs in this process; its cells' stages inherit this
            checkout, local_s = local_run(folders["local"], args.data, env)
            remote_s = one_run_wall(folders["one"], args.data, storage, env)
            pieces = remote_pieces(checkout, folders["local"], storage, env)
            studies = {count: study_wall(folders[f"pool-{count}" if count else "here"], args.data, storage, env, count,
                                       f"pool-{count}") for count in (0, 1, 2)}
    print(f"quick profile, one run: local {local_s:.1f} s; deployment run on a worker {remote_s:.1f} s "
          f"(+{remote_s - local_s:.1f} s, {remote_s / local_s:.2f}x)")
    print("remote steps alone on that run's outputs: " + ", ".join(f"{k} {v:.1f} s" for k, v in pieces.items()))
    walls = {count: seconds for count, (seconds, _) in studies.items()}
    print(f"4-cell study ({', '.join(STUDY)}; {', '.join(TINY)}): cells here {walls[0]:.1f} s, "
          f"1 worker {walls[1]:.1f} s, 2 workers {walls[2]:.1f} s ({walls[1] / walls[2]:.2f}x); "
          f"the three tables are {'equal' if len({t for _, t in studies.values()}) == 1 else 'NOT equal'}")


if __name__ == "__main__":
    main()
