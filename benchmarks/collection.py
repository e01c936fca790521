"""A realistic image collection made here (nothing downloaded), and what Prefine costs on it.

The collection: RGB JPEGs (quality 90) of 200-800 px a side, each a Fashion-MNIST garment scaled
to 40-90% of the shorter side, tinted a random colour, shaded by its own pixels and placed at a
random spot on a textured background (smooth colour blobs plus film grain); 80% under a folder
per class, 20% under unlabeled/. Image i is a function of i alone, so every size is a prefix of
the next (hard links) and --sizes 10000 50000 makes 50,000 images once.

Per size, each measured in a fresh process: ingest at 96 px RGB with one process and with every
core (wall time, img/s, peak RSS of the ingest process and of a decode worker), bytes on disk
per image (source JPEGs, split shards, decode cache), the first --steps SimCLR steps of resnet18,
on a GPU where there is one (peak RSS with its loader workers, the model's img/s) and the loader's img/s alone; then 1,000
images are added to the largest size and ingested again (time, images decoded, and per split the
shards kept as they were and the shards added).
--storage compares raw uint8 shards with encoded ones (JPEG, PNG): bytes, decode img/s, RSS.

    OMP_NUM_THREADS=1 nice python benchmarks/collection.py --sizes 10000 50000 [--work DIR] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SIZE, CHANNELS = 96, 3  # what the collection profile stores
ADDED = 1000  # images added to the largest size before the incremental ingest
GRAIN = np.random.default_rng(0).normal(0, 9, (1024, 1024, 3)).clip(-127, 127).astype(np.int16)  # cropped per image
_GARMENTS: tuple = ()  # (images, labels, classes), loaded before the generator's workers fork


def garments() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from prefine.data.sources import FASHION_CLASSES, read_idx

    source = read_idx(FASHION_MNIST)
    train = np.array([s == "train" for s in source.split])
    return source.images[train, 0].numpy(), source.labels[train].numpy(), FASHION_CLASSES


def picture(i: int, garment: np.ndarray) -> Image.Image:
    """Image i: a tinted, shaded garment on a blob-and-grain background, 200-800 px a side."""
    rng = np.random.default_rng(i)
    w, h = (int(v) for v in rng.integers(200, 801, 2))
    blobs = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    y, x = int(rng.integers(0, 1024 - h + 1)), int(rng.integers(0, 1024 - w + 1))
    canvas = (np.asarray(blobs, np.int16) + GRAIN[y : y + h, x : x + w]).clip(0, 255).astype(np.uint8)
    side = int(min(w, h) * rng.uniform(0.4, 0.9))
    mask = np.asarray(Image.fromarray(garment).resize((side, side), Image.Resampling.BILINEAR), np.float32)[..., None] / 255
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    colour = rng.uniform(30, 255, 3).astype(np.float32)
    patch = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = patch * (1 - mask) + colour * (0.35 + 0.65 * mask) * mask
    return Image.fromarray(canvas)


def _make(task: tuple[Path, list[int]]) -> None:
    pool, indices = task
    images, labels, classes = _GARMENTS
    for i in indices:
        folder = pool / ("unlabeled" if i % 5 == 0 else classes[labels[i % len(labels)]].replace("/", "-"))
        target = folder / f"{i:07d}.jpg"
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            picture(i, images[i % len(images)]).save(target.with_suffix(".tmp"), "JPEG", quality=90)
            os.replace(target.with_suffix(".tmp"), target)


def generate(pool: Path, count: int) -> None:
    """Images 0..count-1 in `pool` (those already there are kept), with every core."""
    global _GARMENTS
    _GARMENTS = garments()
    chunks = [(pool, list(range(start, min(start + 200, count)))) for start in range(0, count, 200)]
    with get_context("fork").Pool(len(os.sched_getaffinity(0))) as workers:
        workers.map(_make, chunks)


def prefix(pool: Path, count: int, target: Path) -> Path:
    """A folder holding images 0..count-1 of `pool`, as hard links (same files, same mtimes)."""
    for file in sorted(pool.rglob("*.jpg")):
        if int(file.stem) < count and not (target / file.relative_to(pool)).exists():
            (target / file.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(file, target / file.relative_to(pool))
    return target


def child(*args: str) -> dict:
    """Run one measurement in a fresh process (a clean peak RSS); its JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    *log, result = done.stdout.strip().splitlines()
    return {**json.loads(result), "log": [line for line in log if line.startswith("ingest:")]}


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decode workers), user and system."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def run_ingest(folder: str, out: str, workers: str) -> dict:
    from prefine.data.ingest import ingest
    from prefine.params import parse

    params = parse({"ingest": {"source": "folder", "path": folder, "image_size": SIZE, "channels": CHANNELS,
                               "workers": int(workers)}, "finetune": {"labels_per_class": 5}})
    start, cpu = time.perf_counter(), cpu_seconds()
    counts = ingest(params, Path(out), Path(out) / "ingest.json")
    return {"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu, "counts": counts,
            "rss_mb": peak_mb(), "worker_rss_mb": peak_mb(resource.RUSAGE_CHILDREN)}


class Enough(Exception):
    """Stops the training loop after the steps that are measured."""


def run_pretrain(data: str, steps: str, batch: str, workers: str) -> dict:
    import torch

    from prefine.data.store import open_split
    from prefine.models.nets import encoder_spec
    from prefine.models.objectives import build_objective
    from prefine.params import PretrainParams
    from prefine.training import device as devices
    from prefine.training.loop import Run, fit

    split = open_split(Path(data) / "unlabeled")
    torch.manual_seed(0)
    device = devices.pick()  # a GPU where there is one, in bf16 as the pretraining stage runs it
    model = build_objective(encoder_spec("resnet18", CHANNELS, SIZE, 32), PretrainParams(encoder="resnet18")).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times: list[float] = []

    def step(batch_tensors, gen):
        times.append(time.perf_counter())
        if len(times) > int(steps):
            raise Enough
        with devices.autocast(device):
            return model.loss(batch_tensors[0], gen)

    run = Run(split, epochs=1, batch_size=int(batch), seed=0, fingerprint="", workers=int(workers))
    try:
        fit(model, optimizer, step, run, device)
    except Enough:
        pass
    per_step = (times[-1] - times[1]) / (len(times) - 2)  # the first step warms up
    return {"model_img_s": int(batch) / per_step, "rss_mb": peak_mb(), "worker_rss_mb": peak_mb(resource.RUSAGE_CHILDREN)}


def run_loader(data: str, batches: str, batch: str, workers: str) -> dict:
    from prefine.data.loader import EpochSampler, make_loader
    from prefine.data.store import open_split

    split = open_split(Path(data) / "unlabeled")
    loader = make_loader(split, EpochSampler(len(split), int(batch), 0, True), int(workers), pin=False)
    seen, start = 0, None
    for k, (images, _) in enumerate(loader):
        if k == 1:
            start = time.perf_counter()
        elif k > 1:
            seen += len(images)
        if k == int(batches):
            break
    return {"img_s": seen / (time.perf_counter() - start), "rss_mb": peak_mb()}


def disk_bytes(path: Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in path.rglob(pattern) if f.is_file())


def shard_files(data: Path) -> dict[str, tuple[str, int]]:
    """Each split shard's sha256 and mtime: a shard kept is one whose both are as they were."""
    from prefine import fingerprint

    return {str(f.relative_to(data)): (fingerprint.file_sha256(f), f.stat().st_mtime_ns)
            for f in sorted(data.glob("*/shard-*"))}


def run_storage(data: str, count: str) -> dict:
    """Raw uint8 records (pread) against the same images encoded (JPEG q90, PNG), decoded by PIL or
    torchvision.io.decode_jpeg: bytes per image and images/s, one process."""
    import io

    import torch
    from torchvision.io import decode_jpeg

    from prefine.data.store import open_split

    split = open_split(Path(data) / "unlabeled")
    rows = np.random.default_rng(0).permutation(len(split))[: int(count)]
    start = time.perf_counter()
    for k in range(0, len(rows), 256):
        split.take(torch.from_numpy(rows[k : k + 256]))
    result = {"raw": {"bytes": int(np.prod(split.shape[1:])), "img_s": len(rows) / (time.perf_counter() - start)}}
    images = split.take(torch.from_numpy(rows))[0].permute(0, 2, 3, 1).numpy()
    for name, options in (("jpeg", {"format": "JPEG", "quality": 90}), ("png", {"format": "PNG"})):
        blobs = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, **options)
            blobs.append(buffer.getvalue())
        start = time.perf_counter()
        for blob in blobs:
            np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        result[name] = {"bytes": sum(map(len, blobs)) / len(blobs), "img_s": len(blobs) / (time.perf_counter() - start)}
        if name == "jpeg":
            tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            start = time.perf_counter()
            for k in range(0, len(tensors), 256):
                decode_jpeg(tensors[k : k + 256])
            result["jpeg"]["torchvision_img_s"] = len(blobs) / (time.perf_counter() - start)
    return result


def run_rss(data: str, mode: str) -> dict:
    """Peak RSS after reading every image of the pool once, in random batches: by pread, or
    through np.memmap (the pages read stay mapped, hence resident)."""
    import torch

    from prefine.data.store import SplitReader, tensors_in

    reader = SplitReader(Path(data) / "unlabeled")
    order = np.random.default_rng(0).permutation(len(reader))
    maps = []
    for file in reader.records.files:
        offset, shape = tensors_in(file)["images"]
        maps.append(np.memmap(file, np.uint8, "r", offset, tuple(shape)))
    start = time.perf_counter()
    for k in range(0, len(order), 256):
        rows = order[k : k + 256]
        if mode == "pread":
            reader.take(torch.from_numpy(rows))
        else:
            shard = np.searchsorted(reader.starts, rows, side="right") - 1
            np.stack([maps[s][r - reader.starts[s]] for s, r in zip(shard, rows)])
    return {"rss_mb": peak_mb(), "img_s": len(order) / (time.perf_counter() - start)}


def measure(size: int, pool: Path, work: Path, args: argparse.Namespace, cores: int) -> dict:
    """Every figure of one row of the table, for the first `size` images."""
    folder = prefix(pool, size, work / f"images-{size}")
    row: dict = {"images": size, "jpeg_kb": disk_bytes(folder, "*.jpg") / size / 1024}
    for workers in sorted({1, cores}):
        out = work / f"data-{size}-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        row[f"ingest_{workers}"] = child("_ingest", str(folder), str(out), str(workers))
        print(f"  {size} images, {workers} process(es): {row[f'ingest_{workers}']}", flush=True)
    data = work / f"data-{size}-{cores}"
    row["shards_kb"] = disk_bytes(data, "shard-*") / size / 1024
    row["cache_kb"] = disk_bytes(data / ".ingest-cache", "chunk-*") / size / 1024
    row["pretrain"] = child("_pretrain", str(data), str(args.steps), str(args.batch), str(args.workers))
    row["loader"] = {w: child("_loader", str(data), "40", str(args.batch), str(w))["img_s"] for w in (0, args.workers)}
    print(f"  {size} images: {row}", flush=True)
    return row


def incremental(size: int, pool: Path, work: Path, cores: int) -> dict:
    """Add ADDED images to the folder of `size` and ingest again, with the cache of the first run."""
    generate(pool, size + ADDED)
    folder = prefix(pool, size + ADDED, work / f"images-{size}")
    data = work / f"data-{size}-{cores}"
    before = shard_files(data)
    result = child("_ingest", str(folder), str(data), str(cores))
    after = shard_files(data)
    shards = {}
    for split in sorted({name.split("/")[0] for name in after}):
        old = [name for name in before if name.startswith(f"{split}/")]
        shards[split] = {"before": len(old), "kept": sum(after.get(name) == before[name] for name in old),
                         "new": sum(name.startswith(f"{split}/") and name not in before for name in after)}
    return {**result, "shards": shards}


def table(rows: list[dict], cores: int) -> str:
    head = ("| images | ingest, 1 process | ingest, {c} processes | speed-up | ingest peak RSS (main / worker) | "
            "pretrain peak RSS (main / loader worker) | source JPEG | shards | decode cache | loader img/s "
            "(0 / 2 workers) | resnet18 img/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|").format(c=cores)
    lines = [head]
    for r in rows:
        one, many = r["ingest_1"], r[f"ingest_{cores}"]
        rate = lambda m: (f"{m['seconds']:.0f} s ({r['images'] / m['seconds']:.0f} img/s, "  # noqa: E731
                          f"{r['images'] / m['cpu_s']:.0f} per CPU-s)")
        p = r["pretrain"]
        lines.append(
            f"| {r['images']:,} | {rate(one)} | {rate(many)} | {one['seconds'] / many['seconds']:.2f}x | "
            f"{many['rss_mb']:.0f} / {many['worker_rss_mb']:.0f} MB | {p['rss_mb']:.0f} / {p['worker_rss_mb']:.0f} MB | "
            f"{r['jpeg_kb']:.1f} KB | {r['shards_kb']:.1f} KB | {r['cache_kb']:.1f} KB | "
            f"{' / '.join(f'{v:.0f}' for v in r['loader'].values())} | {p['model_img_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/prefine-collection"))
    parser.add_argument("--steps", type=int, default=8, help="SimCLR steps measured (after one warm-up)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="loader workers while pretraining")
    parser.add_argument("--storage", action="store_true", help="also compare raw and encoded shards")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    pool = args.work / "pool"
    start = time.perf_counter()
    generate(pool, max(args.sizes))
    print(f"generated {max(args.sizes)} images in {time.perf_counter() - start:.0f} s", flush=True)
    rows = [measure(size, pool, args.work, args, cores) for size in sorted(args.sizes)]
    print(table(rows, cores))
    added = incremental(max(args.sizes), pool, args.work, cores)
    shards = "; ".join(f"{split} {n['kept']} of {n['before']} kept, {n['new']} new" for split, n in added["shards"].items())
    print(f"\nadded {ADDED} to {max(args.sizes)}: {added['seconds']:.1f} s; shards (kept: same bytes and mtime): "
          f"{shards}; {' '.join(added['log'])}")
    if args.storage:
        data = str(args.work / f"data-{max(args.sizes)}-{cores}")
        print(json.dumps({"storage": child("_storage", data, "2000"),
                          "rss": {mode: child("_rss", data, mode) for mode in ("pread", "memmap")}}, indent=1))


COMMANDS = {"_ingest": run_ingest, "_pretrain": run_pretrain, "_loader": run_loader,
            "_storage": run_storage, "_rss": run_rss}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
