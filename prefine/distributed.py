"""Data parallelism across the processes torchrun starts (one per device).

Every rank trains on its own rows of the same global batch, so what is learned does not depend
on the number of devices:
- per-sample random numbers (augmentation, noise, FixMatch's picks) are drawn for the whole
  global batch from the run's shared generator, and each rank keeps its rows (`rand_rows` ...):
  every generator stays in step and each image gets the numbers one process would give it;
- losses over the whole batch (NT-Xent negatives, VICReg's variance/covariance) see every
  rank's embeddings through `gather`, whose backward returns each rank its share;
- BatchNorm normalises over the whole batch (`GlobalBatchNorm`, also on the CPU with gloo,
  where torch's SyncBatchNorm does not run).
In one process every function here is the identity, so single-device code reads the same.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def is_main() -> bool:
    """Only rank 0 writes outputs, logs and the training state."""
    return rank() == 0


def launched() -> bool:
    """True inside a process torchrun started (it sets the rendezvous variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(cuda: bool) -> None:
    """Join torchrun's process group once (nccl on GPUs, gloo on CPUs); no-op outside torchrun.
    The keys ranks exchange addresses under are per restart: torchrun keeps its store across
    restarts, and a new rank reading a dead rank's address would wait for it forever."""
    if launched() and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = dist.PrefixStore(f"prefine/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if cuda else "gloo", store=attempt, rank=rank, world_size=world)


def leave() -> None:
    """Leave the process group (after the stage's work), so every rank exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rows(draw, n: int) -> torch.Tensor:
    """`draw(N)` for the global batch of N = n * world rows, this rank's n rows of it."""
    w = world()
    if w == 1:
        return draw(n)
    start = rank() * n
    return draw(n * w)[start : start + n]


def rand_rows(n: int, *shape: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """torch.rand(n, *shape): uniform [0, 1) numbers for this rank's n rows of the global batch."""
    return _rows(lambda m: torch.rand(m, *shape, generator=generator, device=device), n)


def randn_rows(n: int, *shape: int, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.randn(n, *shape) for this rank's n rows of the global batch."""
    return _rows(lambda m: torch.randn(m, *shape, generator=generator, device=device, dtype=dtype), n)


def randint_rows(low: int, high: int, n: int, *shape: int, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """torch.randint(low, high, (n, *shape)) for this rank's n rows of the global batch."""
    return _rows(lambda m: torch.randint(low, high, (m, *shape), generator=generator, device=device), n)


def uniform_rows(n: int, low: float, high: float, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """n numbers uniform in [low, high) for this rank's rows of the global batch."""
    return _rows(lambda m: torch.empty(m, device=device).uniform_(low, high, generator=generator), n)


class _Gather(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows (an
    all_reduce, which gloo has, rather than reduce_scatter, which it lacks)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.n = len(x)
        parts = [torch.empty_like(x) for _ in range(world())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.n
        return grad[start : start + ctx.n]


class _Sum(torch.autograd.Function):
    """all_reduce (sum) with its gradient: the sum of every rank's gradient of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd's ctx
        x = x.contiguous().clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of x [n, ...] in rank order (the global batch's order), with gradients."""
    return x if world() == 1 else _Gather.apply(x)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The ranks' average of a detached tensor (the loss a log line reports)."""
    if world() == 1:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: the statistics are summed across ranks (an all_reduce
    with its gradient), in two passes (mean, then centred squares) so they match one process's."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world()
        mean = _Sum.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _Sum.apply(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def globalise_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in `module` by a GlobalBatchNorm sharing its parameters and
    buffers (so an optimizer built before still holds the right tensors)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            norm = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            norm.training = child.training
            for key in ("weight", "bias"):
                setattr(norm, key, getattr(child, key))
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(norm, key, getattr(child, key))
            setattr(module, name, norm)
        else:
            globalise_batchnorm(child)
    return module
