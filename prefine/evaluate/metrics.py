"""Test-set metrics of a classifier: accuracy, macro-F1, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch
from sklearn.metrics import confusion_matrix, f1_score
from torch import nn

from prefine.evaluate.probe import embed


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class index per image (the classifier is an `encoder` in the probe's sense)."""
    return embed(model.to(device), images, device).argmax(dim=1)


def scores(labels: torch.Tensor, predicted: torch.Tensor, classes: list[str]) -> dict:
    """The metrics `dvc metrics` shows; per-class accuracy is recall of that class."""
    y, p = labels.numpy(), predicted.numpy()
    cm = confusion_matrix(y, p, labels=list(range(len(classes))))
    per_class = cm.diagonal() / cm.sum(axis=1).clip(min=1)
    return {
        "accuracy": float((y == p).mean()),
        "macro_f1": float(f1_score(y, p, average="macro", labels=list(range(len(classes))), zero_division=0)),
        "per_class": {name: round(float(acc), 4) for name, acc in zip(classes, per_class)},
    }
