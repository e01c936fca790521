"""Batched tensor augmentation vs the usual per-image PIL/torchvision pipeline, in images/s.

Both make SimCLR's two views (crop-resize 0.35..1, flip, brightness/contrast 0.4) of the same
uint8 Fashion-MNIST images: one per image through a DataLoader, the other with
prefine.augment.two_views on whole batches. Timed (a) alone and (b) with one SimCLR training step
per batch (conv encoder) over the first --train-batches batches, on the CPU. Usage:

    python benchmarks/augment_throughput.py [--images 5120] [--workers 0,2] [--train-batches 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine.data.augment import two_views  # noqa: E402
from prefine.data.sources import read_idx  # noqa: E402
from prefine.models.nets import encoder_spec, to_float  # noqa: E402
from prefine.models.objectives import SimCLR, nt_xent  # noqa: E402

Views = tuple[torch.Tensor, torch.Tensor]


class PilTwoViews(Dataset):
    """The per-image way: each uint8 image as a PIL image, augmented twice by torchvision."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = [Image.fromarray(img[0].numpy()) for img in images]
        self.transform = v2.Compose([
            v2.RandomResizedCrop(images.shape[-1], scale=(0.35, 1.0)),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.4, contrast=0.4),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Views:
        return self.transform(self.images[i]), self.transform(self.images[i])


def per_image(images: torch.Tensor, batch: int, workers: int) -> Iterator[Views]:
    loader = DataLoader(PilTwoViews(images), batch_size=batch, num_workers=workers, drop_last=True)
    yield from loader


def batched(images: torch.Tensor, batch: int) -> Iterator[Views]:
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(images) - batch + 1, batch):
        yield two_views(to_float(images[i : i + batch]), gen)


def throughput(views: Iterator[Views], consume: Callable[[Views], None]) -> float:
    """Images/s after the first batch (the warm-up: worker start, first allocations)."""
    consume(next(views))
    start, seen = time.perf_counter(), 0
    for v in views:
        consume(v)
        seen += len(v[0])
    return seen / (time.perf_counter() - start)


def simclr_step(width: int, size: int) -> Callable[[Views], None]:
    """One SimCLR step (the same encoder, projector and loss as pretraining) on given views."""
    torch.manual_seed(0)
    model = SimCLR(encoder_spec("conv", 1, size, width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def step(views: Views) -> None:
        z = model.projector(model.encoder(torch.cat(views)))
        loss = nt_xent(*z.chunk(2), model.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="folder of the IDX files")
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", default="0,2", help="DataLoader num_workers to try, e.g. 0,2")
    parser.add_argument("--width", type=int, default=32, help="conv encoder width")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in this process")
    parser.add_argument("--train-batches", type=int, default=6, help="batches timed with a training step; 0: none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = read_idx(Path(args.data), args.images).images[: args.images]
    size = images.shape[-1]
    pipelines: dict[str, Callable[[], Iterator[Views]]] = {"batched two_views": lambda: batched(images, args.batch)}
    for w in map(int, args.workers.split(",")):
        pipelines[f"PIL, {w} workers"] = lambda w=w: per_image(images, args.batch, w)
    rows = {}
    for name, make in pipelines.items():
        alone = throughput(make(), lambda v: None)
        trained = 0.0
        if args.train_batches:
            trained = throughput(islice(make(), args.train_batches + 1), simclr_step(args.width, size))
        rows[name] = (alone, trained)
    print(f"{len(images)} images {size}x{size}, batch {args.batch}, {torch.get_num_threads()} torch threads, "
          f"SimCLR conv width {args.width} over {args.train_batches} batches, load average {os.getloadavg()[0]:.1f}")
    print(f"{'pipeline':<20}{'augment img/s':>15}{'+ SimCLR step img/s':>22}")
    for name, (alone, trained) in rows.items():
        print(f"{name:<20}{alone:>15.0f}{trained:>22.0f}")
    fast = rows["batched two_views"]
    for name, (alone, trained) in list(rows.items())[1:]:
        ratio = f", + SimCLR step {fast[1] / trained:.2f}x" if trained else ""
        print(f"batched / {name}: augment {fast[0] / alone:.1f}x{ratio}")


if __name__ == "__main__":
    main()
