"""Fine-tuning strategies, and the from-scratch baseline on the same budget and schedule.

`linear`: the encoder is frozen (weights and BatchNorm statistics), only the head learns.
`full`: everything learns, the encoder at `encoder_lr_scale` times the head's LR.
`scratch`: the same architecture from random init, everything at the full LR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from prefine.augment import random_hflip, random_shift
from prefine.nets import Classifier, ConvEncoder, MLPEncoder, to_float
from prefine.params import FinetuneParams
from prefine.store import ImageSet
from prefine.training import EpochFn, Run, fit

STRATEGIES = ("linear", "full", "scratch")


def build(encoder: ConvEncoder | MLPEncoder, classes: int, strategy: str) -> Classifier:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    return Classifier(encoder, classes, frozen=strategy == "linear")


def optimizer_for(model: Classifier, p: FinetuneParams, strategy: str) -> torch.optim.Optimizer:
    encoder_lr = {"linear": 0.0, "full": p.lr * p.encoder_lr_scale, "scratch": p.lr}[strategy]
    groups = [{"params": model.head.parameters(), "lr": p.lr}]
    if encoder_lr > 0:
        groups.append({"params": model.encoder.parameters(), "lr": encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=p.weight_decay)


def epochs_for(n: int, p: FinetuneParams) -> int:
    """The budget is counted in optimizer steps, so a tiny labeled set still gets trained."""
    per_epoch = max(1, n // min(p.batch_size, n))
    return max(1, math.ceil(p.steps / per_epoch))


def train(
    model: Classifier,
    labeled: ImageSet,
    p: FinetuneParams,
    strategy: str,
    seed: int,
    device: torch.device,
    on_epoch: EpochFn | None = None,
) -> list[dict[str, float]]:
    """Fine-tune `model` on the labeled set with light augmentation (shifts, optional flips)."""
    model.to(device)
    optimizer = optimizer_for(model, p, strategy)

    def step(batch: Sequence[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        x = random_shift(to_float(batch[0]), p.shift, gen)
        if p.flip:
            x = random_hflip(x, gen)
        return F.cross_entropy(model(x).float(), batch[1])

    run = Run(
        tensors=[labeled.images, labeled.labels],
        epochs=epochs_for(len(labeled), p),
        batch_size=min(p.batch_size, len(labeled)),
        seed=seed,
        fingerprint="",
        desc=strategy,
    )
    return fit(model, optimizer, step, run, device, on_epoch)
