"""`prefine predict` throughput (images/s) and peak RSS over folders of 1,000 and 10,000 PNGs.

The PNGs are Fashion-MNIST images (the IDX files at --data) written once to a temp folder, the
70,000 of train and test repeated past that (the same pixels under other names: predict does not
dedupe, and a repeat costs what the first did); the classifier is an untrained conv encoder of
--width (the default profile's 32) with a 10-class head: the cost of inference doesn't depend on
the weights. Each size runs in a fresh process, so its peak RSS is its own; a flat peak from
1,000 to 100,000 images is the streaming at work. Timed: the predict() call (decode, forward,
parquet), not the interpreter start, in wall and CPU seconds (CPU time is the steadier figure on
a shared machine). Usage:

    python benchmarks/predict.py [--sizes 1000,10000] [--width 32] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine.data.sources import FASHION_CLASSES, read_idx  # noqa: E402
from prefine.models import weights  # noqa: E402
from prefine.models.nets import Classifier, build_encoder, encoder_spec  # noqa: E402
from prefine.training import device as devices  # noqa: E402
from prefine.use.predict import predict  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_pngs(folder: Path, count: int, data: Path) -> None:
    """`count` Fashion-MNIST images (train, then test, then again) as PNGs, 1,000 per subfolder."""
    images = read_idx(data).images[:, 0].numpy()
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i % len(images)]).save(sub / f"{i:06d}.png")


def write_model(file: Path, width: int) -> None:
    spec = encoder_spec("conv", 1, 28, width)
    weights.save(file, Classifier(build_encoder(spec), len(FASHION_CLASSES)), {"spec": spec, "classes": FASHION_CLASSES})


def measure(model: Path, folder: Path, batch_size: int) -> None:
    """Child mode: one predict() over `folder`; prints its figures as JSON."""
    before = peak_rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    summary = predict(model, [folder], folder.parent / f"{folder.name}.parquet", batch_size=batch_size)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"images": summary.ok + summary.failed, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "rss_before_mib": before, "peak_rss_mib": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data", type=Path, default=FASHION_MNIST)
    parser.add_argument("--measure", nargs=2, type=Path, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure, args.batch_size)
        return
    print(f"device {devices.pick()}, conv width {args.width}, batch size {args.batch_size}")
    print(f"{'images':>8} {'img/s':>8} {'img/CPU-s':>10} {'RSS before MiB':>15} {'peak RSS MiB':>13}", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefine-bench-") as tmp:
        model = Path(tmp) / "classifier.safetensors"
        write_model(model, args.width)
        for size in map(int, args.sizes.split(",")):
            folder = Path(tmp) / f"pngs-{size}"
            write_pngs(folder, size, args.data)
            child = [sys.executable, __file__, "--measure", str(model), str(folder), "--batch-size", str(args.batch_size)]
            r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(f"{r['images']:>8} {r['images'] / r['seconds']:>8.0f} {r['images'] / r['cpu_seconds']:>10.0f} "
                  f"{r['rss_before_mib']:>15.0f} {r['peak_rss_mib']:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
