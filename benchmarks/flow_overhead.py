"""Wall time of one pipeline run through the Prefect `training` flow vs plain `dvc repro`.

Two fresh copies of this tree (quick profile) are reproduced, one each way; then the flow runs
again with nothing changed. Prints both times, their ratio, the no-op time, and whether both
ways wrote the same dvc.lock (stages, commands, deps, params; outputs whose bytes vary run to
run, e.g. ones holding timings or the git commit, are listed). Uses $PREFECT_API_URL if set, else a temporary local server.

    .venv/bin/python benchmarks/flow_overhead.py [--data /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from projects import dvc, make_project  # noqa: E402


def _lock(path: Path) -> tuple[dict, dict]:
    """(everything but output hashes, {output path: md5}) of a dvc.lock."""
    stages = yaml.safe_load(path.read_text())["stages"]
    outs = {o["path"]: o.get("md5") for stage in stages.values() for o in stage.get("outs", [])}
    rest = {name: {k: v for k, v in stage.items() if k != "outs"} for name, stage in stages.items()}
    return rest, outs


def _server() -> contextlib.AbstractContextManager:
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefine-bench-") as tmp, _server():
        from flows.training import training

        by_dvc = make_project(Path(tmp) / "dvc" / "project", args.data, overrides=[])
        by_flow = make_project(Path(tmp) / "flow" / "project", args.data, overrides=[])
        started = time.perf_counter()
        result = dvc(by_dvc, "repro")
        dvc_s = time.perf_counter() - started
        if result.returncode:
            sys.exit(f"dvc repro failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        started = time.perf_counter()
        training(repo=str(by_flow), register_model=False)
        flow_s = time.perf_counter() - started
        started = time.perf_counter()
        training(repo=str(by_flow), register_model=False)
        noop_s = time.perf_counter() - started
        (dvc_rest, dvc_outs), (flow_rest, flow_outs) = _lock(by_dvc / "dvc.lock"), _lock(by_flow / "dvc.lock")
        varying = sorted(p for p in dvc_outs if dvc_outs[p] != flow_outs.get(p))
    print(f"dvc repro:           {dvc_s:7.1f} s")
    print(f"training flow:       {flow_s:7.1f} s")
    print(f"ratio flow/dvc:      {flow_s / dvc_s:7.2f}")
    print(f"no-op flow rerun:    {noop_s:7.1f} s")
    print(f"same dvc.lock:       {dvc_rest == flow_rest and dvc_outs.keys() == flow_outs.keys()}")
    print(f"outputs that differ: {', '.join(varying) or 'none'}")


if __name__ == "__main__":
    main()
