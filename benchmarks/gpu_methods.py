"""Every pretraining method on one device: images/s, peak memory and final loss of a short run.

Made for a short loan of a GPU: it installs nothing, reads the method list from the params
schema (so new methods are included), and runs each the way the pretrain stage does (the
objective's .loss on a uint8 batch moved to the device, augmentation inside it with a device
generator, bf16 autocast on CUDA, AdamW with the objective's betas). It also times the batched
augmentation alone. A method that fails is reported and the others still run. Usage:

    python benchmarks/gpu_methods.py [--device cuda] [--batch 512] [--steps 30] [--warmup 5] [--width 32] [--depth 1]
    python benchmarks/gpu_methods.py --device cpu --steps 2 --batch 64     # smoke test
    python benchmarks/gpu_methods.py --encoder resnet18 --size 96 --channels 3 --methods simclr,vicreg
"""

from __future__ import annotations

import argparse
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine.data.augment import strong_view, two_views  # noqa: E402
from prefine.data.sources import read_idx  # noqa: E402
from prefine.models.nets import encoder_spec, to_float  # noqa: E402
from prefine.models.objectives import Cluster, build_objective  # noqa: E402
from prefine.params import PretrainParams  # noqa: E402
from prefine.training import device as devices  # noqa: E402

METHODS = list(typing.get_args(PretrainParams.model_fields["method"].annotation))


@dataclass
class Row:
    name: str
    images_per_s: float
    ms_per_step: float
    peak_mb: float | None  # None off CUDA
    loss: float | None = None
    error: str | None = None


def load_images(data: Path, count: int, channels: int, size: int) -> tuple[torch.Tensor, str]:
    """uint8 [count, channels, size, size] on the CPU (where the training loop keeps them), and
    what they are: Fashion-MNIST where that is the shape asked for and found, else random."""
    if (channels, size) == (1, 28) and data.exists():
        images = read_idx(data, count).images[:count]
        return images, f"Fashion-MNIST from {data} ({len(images)} images)"
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=gen)
    return images, f"random uint8 images, {channels}x{size}x{size}"


def timed(step: Callable[[torch.Tensor], torch.Tensor | None], batches: list[torch.Tensor], warmup: int,
          device: torch.device) -> tuple[float, float | None, torch.Tensor | None]:
    """(seconds for the batches after `warmup`, peak MB on CUDA, last step's output)."""
    out = None
    for batch in batches[:warmup]:
        out = step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        out = step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak, out


def bench_method(method: str, args: argparse.Namespace, batches: list[torch.Tensor], device: torch.device) -> Row:
    """A short pretraining run of one method, as tasks/pretrain.py trains it."""
    p = PretrainParams(method=method, width=args.width, depth=args.depth, batch_size=args.batch)
    torch.manual_seed(0)
    model = build_objective(encoder_spec(args.encoder, args.channels, args.size, p.width, p.depth), p).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=getattr(model, "betas", (0.9, 0.999)),
                                  weight_decay=p.weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    # cluster's pseudo-classes come from a k-means run once before training: any do for timing a step
    targets = (torch.randint(0, p.clusters, (args.batch,), device=device),) if isinstance(model, Cluster) else ()

    def step(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        with devices.autocast(device):
            out = model.loss(images, gen, *targets)
        loss = out[0] if isinstance(out, tuple) else out  # (loss, parts) for the GAN
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    seconds, peak, loss = timed(step, batches, args.warmup, device)
    steps = len(batches) - args.warmup
    return Row(method, steps * args.batch / seconds, 1000 * seconds / steps, peak, loss.float().item())


def bench_augment(name: str, view: Callable[[torch.Tensor, torch.Generator], object], args: argparse.Namespace,
                  batches: list[torch.Tensor], device: torch.device) -> Row:
    """The batched augmentation alone on the device, from uint8 batches on the CPU."""
    gen = torch.Generator(device=device).manual_seed(0)
    seconds, peak, _ = timed(lambda b: view(to_float(b.to(device)), gen), batches, args.warmup, device)
    steps = len(batches) - args.warmup
    return Row(name, steps * args.batch / seconds, 1000 * seconds / steps, peak)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=str(devices.pick()), help="cuda, cuda:1, cpu (default: as training)")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="IDX folder, else random images")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocations, cuDNN autotune)")
    parser.add_argument("--encoder", default="conv", help="pretrain.encoder: conv, mlp or a torchvision backbone")
    parser.add_argument("--size", type=int, default=28, help="image side, px")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=32, help="conv encoder width")
    parser.add_argument("--depth", type=int, default=1, help="conv encoder: convs per block")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    images, what = load_images(Path(args.data), args.batch * (args.warmup + args.steps), args.channels, args.size)
    shape = (args.warmup + args.steps, args.batch)
    order = torch.randint(len(images), shape, generator=torch.Generator().manual_seed(0))
    batches = list(images[order].unbind())  # full batches even from a small file
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"device {device} ({gpu}), torch {torch.__version__}, {precision}")
    print(f"data: {what}; batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.encoder} encoder" + (f" width {args.width} depth {args.depth}" if args.encoder == "conv" else ""))

    rows = [bench_augment("aug: two_views", two_views, args, batches, device),
            bench_augment("aug: strong_view", strong_view, args, batches, device)]
    for method in args.methods.split(","):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            rows.append(bench_method(method, args, batches, device))
        except Exception as exc:  # report it and keep the device time for the other methods
            rows.append(Row(method, float("nan"), float("nan"), None, error=f"{type(exc).__name__}: {exc}"))
        print(f"  done {method}", flush=True)

    print(f"{'method':<18}{'images/s':>12}{'ms/step':>10}{'peak MB':>10}{'final loss':>12}")
    for r in rows:
        peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "n/a"
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        print(f"{r.name:<18}{r.images_per_s:>12.0f}{r.ms_per_step:>10.2f}{peak:>10}{loss:>12}")
        if r.error:
            print(f"  ERROR {r.error[:300]}")
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(r.error for r in main()) else 0)
