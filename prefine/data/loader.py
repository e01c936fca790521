"""Batches of a split, streamed: a seeded permutation per epoch, read by DataLoader workers.

The batch order is a function of (seed, epoch) alone, drawn in the training process, so a run
resumed at batch k of an epoch skips exactly the batches it had trained on, and the batches are
the same whatever the number of workers. A worker only reads the rows it is handed (one pread
per image, ImageSet.take); augmentation happens later, batched on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

ORDER_SALT = 1_000_003  # epoch_order's seed is seed * ORDER_SALT + epoch


class Batchable(Protocol):
    """What the loader reads: a length, and the tensors of given rows (store.ImageSet)."""

    def __len__(self) -> int: ...

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


def epoch_order(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator an epoch's permutation is drawn from."""
    return torch.Generator().manual_seed(seed * ORDER_SALT + epoch)


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    full = n // batch_size
    return full if drop_last and full > 0 else -(-n // batch_size)


class EpochSampler(Sampler[torch.Tensor]):
    """The row indices of each batch of the current epoch, from batch `start` on (set_epoch).
    In data-parallel training (`world` > 1) `batch_size` is the global batch, a multiple of
    `world`, and this rank reads its contiguous share of each batch."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = batches_per_epoch(n, batch_size, drop_last)
        self.epoch, self.start = 0, 0
        self.share = batch_size // world
        self.offset = rank * self.share

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_epoch - self.start

    def __iter__(self) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=epoch_order(self.seed, self.epoch))
        for b in range(self.start, self.per_epoch):
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield batch if self.share == self.batch_size else batch[self.offset : self.offset + self.share]


class _Rows(Dataset):
    """A whole batch per item: the sampler hands over a batch's rows, the data reads them at once."""

    def __init__(self, data: Batchable) -> None:
        self.data = data

    def __getitem__(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.data.take(rows)


def make_loader(data: Batchable, sampler: EpochSampler, workers: int, pin: bool) -> DataLoader:
    """A DataLoader over `sampler`'s batches; workers (if any) live across epochs, and their seeds
    come from the run's seed, not from the global RNG."""
    return DataLoader(
        _Rows(data), sampler=sampler, batch_size=None, num_workers=workers, pin_memory=pin,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(sampler.seed),
    )
