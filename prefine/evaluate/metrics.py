"""Test-set metrics of a classifier: accuracy, macro-F1, per-class accuracy, confusion matrix.
Counted with numpy (scikit-learn's import costs the fine-tuning stage a second)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from prefine.evaluate.probe import embed


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class index per image (the classifier is an `encoder` in the probe's sense)."""
    return embed(model.to(device), images, device).argmax(dim=1)


def confusion(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> np.ndarray:
    """Counts [actual, predicted] over every class index, so a class never predicted (or never
    seen) still has its row and column."""
    pairs = labels.numpy().astype(np.int64) * classes + predicted.numpy().astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def confusion_table(labels: torch.Tensor, predicted: torch.Tensor, classes: list[str]) -> pd.DataFrame:
    """The confusion matrix as a long table, one row per (actual, predicted) pair in class order:
    names, indices (the plot template sorts by them), count, and share of the actual class's images."""
    cm = confusion(labels, predicted, len(classes))
    actual, guess = np.divmod(np.arange(cm.size), len(classes))
    share = cm / cm.sum(axis=1, keepdims=True).clip(min=1)
    names = np.array(classes, dtype=object)
    return pd.DataFrame({"actual": names[actual], "predicted": names[guess], "actual_index": actual,
                         "predicted_index": guess, "count": cm.ravel(), "share": share.ravel().round(4)})


def confusion_from_table(table: pd.DataFrame, classes: int) -> np.ndarray:
    """confusion_table's counts back as a [actual, predicted] matrix: the visualize stage reads
    evaluate's counts instead of predicting the whole test set again."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    counts[table["actual_index"], table["predicted_index"]] = table["count"]
    return counts


def scores(labels: torch.Tensor, predicted: torch.Tensor, classes: list[str]) -> dict:
    """The metrics `dvc metrics` shows; per-class accuracy is recall of that class."""
    cm = confusion(labels, predicted, len(classes))
    hits, actual, guessed = cm.diagonal(), cm.sum(axis=1), cm.sum(axis=0)
    per_class = hits / actual.clip(min=1)
    f1 = 2 * hits / (actual + guessed).clip(min=1)  # 2PR / (P + R); 0 for a class never seen nor predicted
    return {
        "accuracy": float(hits.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1.mean()),
        "per_class": {name: round(float(acc), 4) for name, acc in zip(classes, per_class)},
    }
