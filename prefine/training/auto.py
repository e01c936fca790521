"""`finetune.strategy: auto`: the fine-tuning strategy chosen by cross-validation on the labeled
budget alone (the test split is never read).

A small grid of strategies (GRID, each at the project's other finetune params) is fitted on
k - 1 stratified folds of the labeled images and scored on the held-out fold, k times each, so
every labeled image is held out once. A few hundred held-out images cannot rank strategies a
point apart, so auto takes the first strategy of GRID whose held-out accuracy is within one
paired standard error of the best one's (the one-standard-error rule, docs/methods.md), and
trains it on every labeled image. The cross-validation fits take the real run's steps unless all
of them together would cost more than `auto_budget` fine-tuning runs, counted in images through
the network (then each is shortened alike): the `linear` probe takes no steps, a step of
`propagate` trains `mu` pool images beside each labeled one, and each of its fits also builds the
pool's kNN graph once, which the budget does not count. Held-out images may sit in the pool
unlabeled, as any labeled image does; their labels never seed the propagation. Without an
unlabeled pool the grid has no `propagate`. The choice and every score go into the model's
metadata and the metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from prefine.data.store import ImageSet
from prefine.evaluate.metrics import predict
from prefine.params import FinetuneParams
from prefine.training import finetuning

# the strategies auto considers, in order of preference among those the CV cannot tell apart: the one
# that learns from the pool (the best on the test split in 6 cells of 6, session 18), then the cheaper
GRID = ("propagate", "linear", "partial", "full")


def cost(strategy: str, mu: int) -> float:
    """A CV fit's images through the network, in units of cv_steps labeled batches."""
    if strategy == "linear":
        return 0.0
    return 1.0 + mu if strategy in finetuning.POOLED else 1.0


def grid(unlabeled: ImageSet | None) -> tuple[str, ...]:
    """The strategies auto considers: those that learn from the pool only when there is one."""
    pool = unlabeled is not None and len(unlabeled) > 0
    return tuple(s for s in GRID if pool or s not in finetuning.POOLED)


def folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """k disjoint held-out row sets, each with about 1/k of every class (seeded shuffle per class)."""
    gen = torch.Generator().manual_seed(seed)
    assigned = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        assigned[rows] = torch.arange(len(rows)) % k
    return [(assigned == f).nonzero().flatten() for f in range(k)]


def _subset(data: ImageSet, rows: torch.Tensor) -> ImageSet:
    images, labels = data.take(rows)
    return ImageSet(images, labels, data.classes)


def choose(encoder: Path, labeled: ImageSet, p: FinetuneParams, seed: int, device: torch.device,
           init: Path | None = None, unlabeled: ImageSet | None = None) -> tuple[FinetuneParams, dict]:
    """The params to fine-tune with (p with the chosen strategy) and the record of the choice."""
    started = time.perf_counter()
    smallest = int(torch.bincount(labeled.labels).min())
    k = min(p.auto_folds, smallest)
    if k < 2:  # one image of some class: no fold could hold it out and still train on it
        return p.model_copy(update={"strategy": "full"}), {
            "choice": "full", "reason": f"{smallest} labeled image(s) in some class: too few to cross-validate; "
            "full fine-tuning"}
    strategies = grid(unlabeled)
    affordable = p.steps * p.auto_budget / (sum(cost(s, p.mu) for s in strategies) * k)
    cv_steps = max(1, min(p.steps, round(affordable)))
    held_out = folds(labeled.labels, k, seed)
    splits = [(_subset(labeled, torch.cat([rows for g, rows in enumerate(held_out) if g != f])),
               _subset(labeled, test_rows)) for f, test_rows in enumerate(held_out)]  # read once, fitted by each
    correct = {}
    for strategy in strategies:
        q = p.model_copy(update={"strategy": strategy, "steps": cv_steps})
        hits = torch.empty(len(labeled), dtype=torch.bool)
        for (train, test), rows in zip(splits, held_out):
            model = finetuning.start(strategy, encoder, len(labeled.classes), seed, q.unfreeze, init)
            finetuning.train(model, train, q, strategy, seed, device, unlabeled=unlabeled)
            hits[rows] = predict(model, test.images, device).cpu() == test.labels
        correct[strategy] = hits
        print(f"auto: {strategy}: held-out accuracy {hits.float().mean():.4f} ({k} folds, {cv_steps} steps)",
              flush=True)
    best, scores, errors = pick(correct)
    record = {"choice": best, "cv_accuracy": scores, "cv_gap_se": errors, "folds": k, "cv_steps": cv_steps,
              "seconds": round(time.perf_counter() - started, 1)}
    print(f"auto: chose {best} in {record['seconds']} s", flush=True)
    return p.model_copy(update={"strategy": best}), record


def pick(correct: dict[str, torch.Tensor]) -> tuple[str, dict[str, float], dict[str, float]]:
    """The first strategy (in `correct`'s order) whose held-out accuracy is within one standard error
    of the best one's, the accuracies, and each one's standard error of its gap to the best (paired:
    the same held-out images, so only the images the two disagree on count)."""
    hits = {s: c.float() for s, c in correct.items()}
    scores = {s: h.mean().item() for s, h in hits.items()}
    top = hits[max(scores, key=scores.get)]
    errors = {s: ((top - h).std() / len(h) ** 0.5).item() for s, h in hits.items()}
    choice = next(s for s in hits if max(scores.values()) - scores[s] <= errors[s])
    return choice, {s: round(v, 4) for s, v in scores.items()}, {s: round(v, 4) for s, v in errors.items()}
