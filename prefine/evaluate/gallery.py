"""What the visualize stage's pictures are and say, and the per-class gains they show: light (no
torch, no matplotlib), so the Prefect artifacts, the report page and the stage share one list."""

from __future__ import annotations

from pathlib import Path

from prefine import paths

CAPTIONS: dict[Path, str] = {
    paths.EMBEDDING_MAP_FILE: "t-SNE map of test embeddings by class: pretrained encoder (no labels), "
                              "fine-tuned from it, and scratch",
    paths.NEIGHBOURS_FILE: "Closest unlabeled images (cosine, pretrained encoder) to test images of each class",
    paths.AUGMENTATIONS_FILE: "Training images and their augmented views under the current params",
    paths.CLASS_GAIN_FILE: "Per-class test accuracy gain of the pretrained classifier over scratch",
    paths.CONFUSED_PAIRS_FILE: "Most confused class pairs of the pretrained classifier, with test images",
}


def class_gains(detail: dict) -> list[dict[str, str | float]]:
    """One row per class, in class order (metrics/evaluate_detail.json keeps it): the test
    accuracy (recall) of the pretrained and the scratch classifier, and the gain of the first."""
    pretrained, scratch = detail["per_class"]["pretrained"], detail["per_class"]["scratch"]
    return [{"class": name, "pretrained": acc, "scratch": scratch[name], "gain": round(acc - scratch[name], 4)}
            for name, acc in pretrained.items()]
