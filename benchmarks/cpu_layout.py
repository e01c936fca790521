"""What the CPU paths of the default run gain from memory layout, in images/s and seconds.

The conv encoder (width 32, depth 1, pool 2: the default's) on real Fashion-MNIST images, random
weights (speed does not depend on them), each figure the same work done both ways:
- embedding (eval, no grad) at 1,024 and 128 images a batch, channels-last vs the usual NCHW;
- a training step of `cluster` pretraining (one view, a 100-way head, AdamW, batch 256), both layouts;
- knn_graph over --graph-rows embeddings of 512 numbers (random: the time does not depend on
  them; docs/results.md has the neighbours found on real ones): exact with a fresh similarity block
  each time (before session 21), exact with one reused block, and searched in a projection first.
Usage (alone on the machine: timings shift with any other job):

    python benchmarks/cpu_layout.py [--images 20000] [--graph-rows 61000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine.data.augment import one_view  # noqa: E402
from prefine.data.sources import read_idx  # noqa: E402
from prefine.evaluate import probe  # noqa: E402
from prefine.evaluate.probe import KNN_ROWS, knn_graph  # noqa: E402
from prefine.models.nets import ConvEncoder, to_float  # noqa: E402


def encoder(channels_last: bool) -> ConvEncoder:
    """The default encoder, in channels-last (as built) or made NCHW again, its forward bypassed
    so the input keeps that layout too."""
    torch.manual_seed(0)
    net = ConvEncoder(1, 32, depth=1, pool=2)
    if not channels_last:
        net.to(memory_format=torch.contiguous_format)
        net.forward = lambda x: net.pool(net.blocks(x))  # type: ignore[method-assign]
    return net


def rate(images: torch.Tensor, batch: int, work: Callable[[torch.Tensor], None]) -> float:
    """Images/s of `work` over `images` in batches of `batch` (one warm-up batch untimed)."""
    work(images[:batch])
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        work(images[i : i + batch])
    return len(images) / (time.perf_counter() - start)


def embedding_rate(images: torch.Tensor, batch: int, channels_last: bool) -> float:
    net = encoder(channels_last).eval()
    with torch.no_grad():
        return rate(images, batch, lambda x: net(to_float(x)))


def training_rate(images: torch.Tensor, channels_last: bool) -> float:
    net = encoder(channels_last)
    head = torch.nn.Linear(net.dim, 100)
    optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()])
    gen = torch.Generator().manual_seed(0)

    def step(x: torch.Tensor) -> None:
        targets = torch.randint(0, 100, (len(x),), generator=gen)
        loss = F.cross_entropy(head(net(one_view(to_float(x), gen))), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return rate(images, 256, step)


def graph_fresh_blocks(embeddings: torch.Tensor, k: int) -> None:
    """knn_graph's loop as it was: each similarity block a new tensor."""
    z = F.normalize(embeddings, dim=1)
    for start in range(0, len(z), KNN_ROWS):
        sim = z[start : start + KNN_ROWS] @ z.T
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -float("inf")
        sim.topk(k, dim=1)


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--graph-rows", type=int, default=61_000, help="the default run's graph: 1,000 + 60,000")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = read_idx(args.data, limit=args.images).images[: args.images]
    print(f"{len(images)} Fashion-MNIST images, {args.threads} threads, torch {torch.__version__}\n")
    print("| work | NCHW | channels-last | ratio |\n|---|---:|---:|---:|")
    for batch in (1024, 128):
        plain, last = (embedding_rate(images, batch, cl) for cl in (False, True))
        print(f"| embedding, batch {batch}, images/s | {plain:,.0f} | {last:,.0f} | {last / plain:.2f} |", flush=True)
    plain, last = (training_rate(images[:12_800], cl) for cl in (False, True))
    print(f"| cluster pretraining step, batch 256, images/s | {plain:,.0f} | {last:,.0f} | {last / plain:.2f} |")
    z = torch.randn(args.graph_rows, 512, generator=torch.Generator().manual_seed(0))
    fresh = seconds(lambda: graph_fresh_blocks(z, 10))
    print(f"\n| knn_graph, {args.graph_rows:,} x 512 | seconds | ratio to the first |\n|---|---:|---:|")
    print(f"| exact, a fresh block each time | {fresh:.1f} | 1.00 |", flush=True)
    projected_from = probe.EXACT_ROWS
    for name, rows in (("exact, one reused block", 10**12), (f"search in {probe.PROJECTED} dimensions, rank "
                                                              f"{probe.CANDIDATES} exactly", projected_from)):
        probe.EXACT_ROWS = rows
        took = seconds(lambda: knn_graph(z, 10))
        print(f"| {name} | {took:.1f} | {fresh / took:.2f} |", flush=True)


if __name__ == "__main__":
    main()
