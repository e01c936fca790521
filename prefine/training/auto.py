"""`finetune.strategy: auto`: the fine-tuning recipe chosen by cross-validation on the labeled
budget alone (the test split is never read).

A small grid of recipes (strategy, encoder LR scale, steps) is fitted on k - 1 stratified folds
of the labeled images and scored on the held-out fold, k times each; the recipe with the best
mean held-out accuracy (the earlier one on a tie) is then trained on every labeled image. The
cross-validation fits are shortened so that all of them together cost `auto_budget` times one
full fine-tuning run, counted in optimizer steps: the `linear` probe takes none, so the budget
goes to the recipes that do (the shorter their CV fits, the more a converged probe is favoured
over them: docs/results.md). The choice and every score go into the model's metadata and the metrics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prefine.data.store import ImageSet
from prefine.evaluate.metrics import predict
from prefine.params import FinetuneParams
from prefine.training import finetuning


@dataclass(frozen=True)
class Recipe:
    """One point of the grid: a strategy, the encoder's LR scale, and a share of `steps`."""

    strategy: str
    encoder_lr_scale: float = 1.0
    steps_share: float = 1.0

    def params(self, p: FinetuneParams, steps: int) -> FinetuneParams:
        return p.model_copy(update={"strategy": self.strategy, "encoder_lr_scale": self.encoder_lr_scale,
                                    "steps": max(1, round(steps * self.steps_share))})

    @property
    def cost(self) -> float:
        """A CV fit's optimizer steps, in units of cv_steps: the `linear` probe takes none."""
        return 0.0 if self.strategy == "linear" else self.steps_share

    def name(self) -> str:
        steps = "" if self.steps_share == 1.0 else f", {self.steps_share:g} of the steps"
        return f"{self.strategy} (encoder LR x{self.encoder_lr_scale:g}{steps})"


GRID = (
    Recipe("linear"),
    Recipe("partial"),
    Recipe("full", 1.0),
    Recipe("full", 0.1),
    Recipe("full", 1.0, 0.5),
)


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
           init: Path | None = None) -> tuple[FinetuneParams, dict]:
    """The params to fine-tune with (p with the chosen recipe) and the record of the choice."""
    started = time.perf_counter()
    smallest = int(torch.bincount(labeled.labels).min())
    k = min(p.auto_folds, smallest)
    if k < 2:  # one image of some class: no fold could hold it out and still train on it
        chosen = Recipe("full")
        return chosen.params(p, p.steps), {"choice": chosen.name(), "reason": f"{smallest} labeled image(s) "
                                           "in some class: too few to cross-validate; full fine-tuning"}
    cv_steps = max(1, round(p.steps * p.auto_budget / (sum(r.cost for r in GRID) * k)))
    held_out = folds(labeled.labels, k, seed)
    splits = [(_subset(labeled, torch.cat([rows for g, rows in enumerate(held_out) if g != f])),
               _subset(labeled, test_rows)) for f, test_rows in enumerate(held_out)]  # read once, fitted 5x
    scores = {}
    for recipe in GRID:
        accuracy = []
        for train, test in splits:
            q = recipe.params(p, cv_steps)
            model = finetuning.start(recipe.strategy, encoder, len(labeled.classes), seed, q.unfreeze, init)
            finetuning.train(model, train, q, recipe.strategy, seed, device)
            accuracy.append((predict(model, test.images, device).cpu() == test.labels).float().mean().item())
        scores[recipe.name()] = round(sum(accuracy) / k, 4)
        print(f"auto: {recipe.name()}: held-out accuracy {scores[recipe.name()]:.4f} ({k} folds)", flush=True)
    best = max(GRID, key=lambda r: scores[r.name()])  # max keeps the first of equals
    record = {"choice": best.name(), "recipe": asdict(best), "cv_accuracy": scores, "folds": k,
              "cv_steps": cv_steps, "seconds": round(time.perf_counter() - started, 1)}
    print(f"auto: chose {best.name()} in {record['seconds']} s", flush=True)
    return best.params(p, p.steps), record
