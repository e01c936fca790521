"""Data-parallel pretraining throughput: images/s of the pretrain stage on 1 and on N processes.

A temp project (this pipeline) ingests --images Fashion-MNIST images once; then the pretrain
stage runs as a user runs it (`python -m tasks.pretrain`, torchrun when resources.devices > 1),
at the same global batch, from scratch each time. The figure is images trained / wall seconds of
the stage process, start-up included (torch import, torchrun's rendezvous: a few seconds, so
use enough --epochs). On a CPU host the processes share the same cores (gloo); on a GPU host
each gets a GPU. Scaling efficiency = (img/s on N) / (N x img/s on 1). Usage:

    python benchmarks/ddp.py [--devices 1,2] [--method simclr] [--images 6000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from projects import VENV_ENV, dvc, make_project  # noqa: E402

from flows.overrides import apply  # noqa: E402
from prefine import paths  # noqa: E402


def pretrain(base: Path, dest: Path, overrides: list[str]) -> tuple[int, float]:
    """(images trained, wall seconds) of the pretrain stage in a copy of `base`."""
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns(".git"))
    apply(dest, None, overrides)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=dest, env=VENV_ENV, capture_output=True,
                            text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"pretrain with {overrides} failed:\n{result.stderr[-3000:]}")
    history = torch.load(dest / paths.PRETRAIN_STATE_FILE, weights_only=True)["history"]
    return int(history[-1]["images"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2", help="process counts to compare (the first is the base)")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--images", type=int, default=6000, help="ingest.limit: training images read")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="ingest.path")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="more key=value for params.yaml")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    common = [f"pretrain.method={args.method}", f"pretrain.epochs={args.epochs}", *args.overrides]
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefine-ddp-") as tmp:
        base = make_project(Path(tmp) / "base", args.data, [f"ingest.limit={args.images}"], "default")
        if (ingest := dvc(base, "repro", "ingest")).returncode:
            sys.exit(ingest.stderr)
        for n in counts:
            images, wall = pretrain(base, Path(tmp) / f"devices-{n}", [*common, f"resources.devices={n}"])
            rows.append((n, images, wall, images / wall))
    gpus = torch.cuda.device_count()
    print(f"pretrain {args.method}, {args.epochs} epochs, {'%d GPU(s)' % gpus if gpus else 'CPU (gloo)'}")
    print(f"{'processes':>9} {'images':>8} {'wall s':>8} {'img/s':>8} {'efficiency':>10}")
    base_rate = rows[0][3] / rows[0][0]
    for n, images, wall, rate in rows:
        print(f"{n:>9} {images:>8} {wall:>8.1f} {rate:>8.0f} {rate / (n * base_rate):>10.2f}")


if __name__ == "__main__":
    main()
