"""Fine-tuning strategies, and the from-scratch baseline on the same budget and schedule.

`linear`: the encoder is frozen (weights and BatchNorm statistics) and the head is the linear
probe fitted to convergence on its embeddings (L-BFGS, no steps): at 10 labels per class 0.717
against 0.703 for 1,000 Adam steps on augmented batches, and 5 s instead of 21 (docs/results.md).
`partial`: the last `unfreeze` encoder blocks learn (at `encoder_lr_scale` times the head's LR).
`full`: everything learns, the encoder at `encoder_lr_scale` times the head's LR.
`semisup`: `full`, plus FixMatch on the unlabeled pool: a prediction on a weakly augmented view
that is confident enough becomes the target for a strongly augmented view of the same image.
`scratch`: the same architecture from random init, everything at the full LR, on the same data
recipe as the chosen strategy (with the unlabeled pool when that is `semisup`), so the gap
between the two measures the pretraining and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from prefine import distributed
from prefine.data.augment import strong_view, weak_view
from prefine.data.store import ImageSet
from prefine.distributed import randint_rows
from prefine.errors import PrefineError
from prefine.evaluate.names import SCRATCH
from prefine.evaluate.probe import embed, probe_head
from prefine.models import weights
from prefine.models.nets import Classifier, Encoder, EncoderSpec, build_encoder, to_float, widen
from prefine.params import FinetuneParams
from prefine.training.loop import EpochFn, Run, StepOutput, fit

STRATEGIES = ("linear", "partial", "full", "semisup", SCRATCH)


def build(encoder: Encoder, classes: int, strategy: str, unfreeze: int = 1) -> Classifier:
    """The classifier for `strategy`; `partial` trains only the last `unfreeze` encoder blocks."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {STRATEGIES}")
    blocks = len(encoder.blocks)
    frozen = {"linear": blocks, "partial": blocks - min(unfreeze, blocks)}.get(strategy, 0)
    return Classifier(encoder, classes, frozen_blocks=frozen)


def start(strategy: str, encoder: Path | EncoderSpec, classes: int, seed: int, unfreeze: int = 1,
          init: Path | None = None) -> Classifier:
    """Seed, then build the encoder and the head. `encoder` is a weights file, or a spec; for
    SCRATCH only its architecture is used (random init), and `init` (finetune.init), when given,
    replaces its weights for the other strategies. Every build draws the same random numbers, so
    a pretrained run and its scratch twin start from the same head."""
    torch.manual_seed(seed)
    if strategy != SCRATCH and init is None:
        net = weights.load_encoder(encoder)[0]
    else:
        net = build_encoder(encoder if isinstance(encoder, dict) else weights.load(encoder)[1]["spec"])
        if strategy != SCRATCH:
            weights.load_into(net, init, "finetune.init")
    return build(net, classes, strategy, unfreeze)


def _probe(model: Classifier, labeled: ImageSet, device: torch.device, on_epoch: EpochFn | None) -> list[dict]:
    """The `linear` strategy: probe_head, and one record (its loss and accuracy on the labeled
    images, at step 0: it takes no optimizer step) so its curves exist beside the others."""
    probe_head(model, labeled, device)
    logits = embed(model, labeled.images, device)  # the classifier's outputs, in eval mode
    record = {"epoch": 1, "step": 0, "images": len(labeled),
              "loss": F.cross_entropy(logits, labeled.labels).item(),
              "train_accuracy": (logits.argmax(1) == labeled.labels).float().mean().item()}
    if on_epoch is not None and distributed.is_main():
        on_epoch(record)
    print(f"linear: probe fitted on {len(labeled)} embeddings, training accuracy {record['train_accuracy']:.4f}",
          flush=True)
    return [record]


def optimizer_for(model: Classifier, p: FinetuneParams, strategy: str) -> torch.optim.Optimizer:
    encoder_lr = p.lr if strategy == SCRATCH else p.lr * p.encoder_lr_scale
    groups = [{"params": list(model.head.parameters()), "lr": p.lr}]
    trainable = [w for w in model.encoder.parameters() if w.requires_grad]
    if trainable and encoder_lr > 0:
        groups.append({"params": trainable, "lr": encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=p.weight_decay)


def epochs_for(n: int, p: FinetuneParams) -> int:
    """The budget is counted in optimizer steps, so a tiny labeled set still gets trained."""
    per_epoch = max(1, n // min(p.batch_size, n))
    return max(1, math.ceil(p.steps / per_epoch))


def fixmatch_loss(
    model: Classifier, unlabeled: torch.Tensor, p: FinetuneParams, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the strong view against the weak view's confident predictions (FixMatch);
    also the share of the batch confident enough to count."""
    x = to_float(unlabeled)
    with torch.no_grad():
        probs = widen(model(weak_view(x, p.shift, p.flip, gen))).softmax(dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= p.threshold).to(probs.dtype)
    per_image = F.cross_entropy(widen(model(strong_view(x, gen))), pseudo, reduction="none")
    return (per_image * mask).mean(), mask.mean()


def train(
    model: Classifier,
    labeled: ImageSet,
    p: FinetuneParams,
    strategy: str,
    seed: int,
    device: torch.device,
    on_epoch: EpochFn | None = None,
    unlabeled: ImageSet | None = None,
) -> list[dict[str, float]]:
    """Fine-tune `model` on the labeled set with light augmentation (shifts, optional flips);
    when p.strategy is semisup (for its scratch baseline too), also on the unlabeled pool. Either
    set may be in memory (read_split) or on disk (open_split)."""
    model.to(device)
    if strategy == "linear":
        return _probe(model, labeled, device, on_epoch)
    semisup = p.strategy == "semisup" and strategy in ("semisup", SCRATCH)
    if semisup and (unlabeled is None or len(unlabeled) == 0):
        raise PrefineError("finetune.strategy = semisup needs unlabeled images (data/unlabeled is empty)")
    optimizer = optimizer_for(model, p, strategy)
    pool = unlabeled if semisup else None

    def step(batch: Sequence[torch.Tensor], gen: torch.Generator) -> StepOutput:
        x = weak_view(to_float(batch[0]), p.shift, p.flip, gen)
        logits = widen(model(x))
        loss = F.cross_entropy(logits, batch[1])
        # accuracy on the (augmented) training batches: every label is in the budget, none held out
        seen = {"train_accuracy": (logits.detach().argmax(dim=1) == batch[1]).to(logits.dtype).mean()}
        if pool is None:
            return loss, seen
        pick = randint_rows(0, len(pool), p.mu * len(x), generator=gen, device=gen.device).cpu()  # this rank's share
        unsup, confident = fixmatch_loss(model, pool.take(pick)[0].to(device), p, gen)
        return loss + p.unlabeled_weight * unsup, {**seen, "labeled_loss": loss.detach(), "confident": confident}

    run = Run(
        data=labeled,
        epochs=epochs_for(len(labeled), p),
        batch_size=min(p.batch_size, len(labeled)),
        seed=seed,
        fingerprint="",
        desc=strategy,
    )
    return fit(model, optimizer, step, run, device, on_epoch)
