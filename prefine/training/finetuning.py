"""Fine-tuning strategies, and the from-scratch baseline on the same budget and schedule.

`linear`: the encoder is frozen (weights and BatchNorm statistics) and the head is the linear
probe fitted to convergence on its embeddings (L-BFGS, no steps): at 10 labels per class 0.717
against 0.703 for 1,000 Adam steps on augmented batches, and 5 s instead of 21 (docs/results.md).
`partial`: the last `unfreeze` encoder blocks learn (at `encoder_lr_scale` times the head's LR).
`full`: everything learns, the encoder at `encoder_lr_scale` times the head's LR.
`semisup`: `full`, plus FixMatch on the unlabeled pool: a prediction on a weakly augmented view
that is confident enough becomes the target for a strongly augmented view of the same image.
`propagate`: `full`, plus the unlabeled pool with labels propagated from the labeled set over
the kNN graph of the model's own embeddings (training/propagation.py), weighted by certainty; the
labels are propagated again from the model being trained at the start of each of `rounds` rounds.
The pool images are seen under the strong view, as FixMatch's are: with the weak view the model
fits the propagated labels' errors as rounds go on (10 labels a class, seed 0, 4 rounds: 0.8059
strong against 0.7894 weak; 2 rounds: 0.7975 against 0.7938; docs/results.md).
Every strategy that takes steps starts, with `head_init: probe`, from the encoder's converged
linear probe as its head (LP-FT, Kumar et al. 2022): the steps then refine a classifier that is
already as good as the probe, instead of first fitting a random head through a distorting encoder. At 100 labels
a class, `propagate`, seed 0: 0.8506 after 500 steps, where a random head needs 1,000 for 0.8523.
`scratch`: the same architecture from random init (its head too: a converged probe of random
features cost the twin 5 points in the same measurement), everything at the full LR, on the same data
recipe as the chosen strategy (with the unlabeled pool when that is `semisup` or `propagate`:
its graph then comes from the random encoder), so the gap between the two measures the
pretraining and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
from prefine.training import propagation
from prefine.training.loop import EpochFn, Run, StepOutput, fit

STRATEGIES = ("linear", "partial", "full", "semisup", "propagate", SCRATCH)
POOLED = ("semisup", "propagate")  # strategies that learn from the unlabeled pool too
COUNTED = ("epoch", "step", "images")  # record fields that count on from round to round


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
    when p.strategy learns from the pool (POOLED; for its scratch baseline too), also on the
    unlabeled pool. Either set may be in memory (read_split) or on disk (open_split)."""
    model.to(device)
    if strategy == "linear":
        return _probe(model, labeled, device, on_epoch)
    pooled = p.strategy in POOLED and strategy in (p.strategy, SCRATCH)
    if pooled and (unlabeled is None or len(unlabeled) == 0):
        raise PrefineError(f"finetune.strategy = {p.strategy} needs unlabeled images (data/unlabeled is empty)")
    if p.head_init == "probe" and strategy != SCRATCH:
        probe_head(model, labeled, device)
        print(f"{strategy}: the head starts as the encoder's converged linear probe", flush=True)

    def labeled_step(batch: Sequence[torch.Tensor], gen: torch.Generator) -> StepOutput:
        x = weak_view(to_float(batch[0]), p.shift, p.flip, gen)
        logits = widen(model(x))
        loss = F.cross_entropy(logits, batch[1])
        # accuracy on the (augmented) training batches: every label is in the budget, none held out
        return loss, {"train_accuracy": (logits.detach().argmax(dim=1) == batch[1]).to(logits.dtype).mean()}

    if pooled and p.strategy == "propagate":
        return _propagated(model, labeled, unlabeled, p, strategy, seed, device, on_epoch, labeled_step)

    def step(batch: Sequence[torch.Tensor], gen: torch.Generator) -> StepOutput:
        loss, seen = labeled_step(batch, gen)
        if not pooled:
            return loss, seen
        n = p.mu * len(batch[0])  # this rank's share
        pick = randint_rows(0, len(unlabeled), n, generator=gen, device=gen.device).cpu()
        unsup, confident = fixmatch_loss(model, unlabeled.take(pick)[0].to(device), p, gen)
        return loss + p.unlabeled_weight * unsup, {**seen, "labeled_loss": loss.detach(), "confident": confident}

    return fit(model, optimizer_for(model, p, strategy), step, _run(labeled, p, seed, strategy), device, on_epoch)


def _run(labeled: ImageSet, p: FinetuneParams, seed: int, desc: str) -> Run:
    return Run(data=labeled, epochs=epochs_for(len(labeled), p), batch_size=min(p.batch_size, len(labeled)),
               seed=seed, fingerprint="", desc=desc)


def _propagated(model: Classifier, labeled: ImageSet, pool: ImageSet, p: FinetuneParams, strategy: str,
                seed: int, device: torch.device, on_epoch: EpochFn | None,
                labeled_step: Callable[[Sequence[torch.Tensor], torch.Generator], StepOutput]) -> list[dict]:
    """The `propagate` recipe: p.rounds rounds of p.steps / p.rounds steps, each with its own
    cosine schedule (seed + round) and pool labels propagated from the model as it is then. The
    records of later rounds count on from the earlier ones'."""
    rows = propagation.pool_sample(len(pool), seed)
    rounds = p.model_copy(update={"steps": max(1, p.steps // p.rounds)})
    history: list[dict] = []
    for r in range(p.rounds):
        pseudo, weight = propagation.pool_labels(model.encoder, labeled, pool.images, rows, device)
        shares = torch.bincount(pseudo, minlength=len(labeled.classes)).tolist()
        print(f"{strategy}: round {r + 1}/{p.rounds}: labels propagated to {len(rows)} pool images "
              f"(per class {shares}; mean weight {weight.mean().item():.3f})", flush=True)
        pseudo, weight = pseudo.to(device), weight.to(device)

        def step(batch: Sequence[torch.Tensor], gen: torch.Generator) -> StepOutput:
            loss, seen = labeled_step(batch, gen)
            pick = randint_rows(0, len(rows), p.mu * len(batch[0]), generator=gen, device=gen.device)
            x = to_float(pool.take(torch.from_numpy(rows[pick.cpu().numpy()]))[0].to(device))
            logits = widen(model(strong_view(weak_view(x, p.shift, p.flip, gen), gen)))
            unsup = (F.cross_entropy(logits, pseudo[pick], reduction="none") * weight[pick]).mean()
            return loss + p.unlabeled_weight * unsup, {**seen, "labeled_loss": loss.detach(),
                                                       "pool_loss": unsup.detach()}

        done = {key: history[-1][key] if history else 0 for key in COUNTED}

        def shifted(record: dict, done: dict = done) -> dict:
            return {**record, **{key: record[key] + done[key] for key in COUNTED}}

        log = None if on_epoch is None else (lambda record: on_epoch(shifted(record)))
        run = _run(labeled, rounds, seed + r, f"{strategy} round {r + 1}")
        records = fit(model, optimizer_for(model, p, strategy), step, run, device, log)
        history += [shifted(record) for record in records]
    return history
