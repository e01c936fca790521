"""Stage ingest: one source in; an unlabeled pool, a labeled budget and a test split out.

Splits and the labeled choice come from content hashes, so an image keeps its place when the
dataset grows. The pool is every training image without its label and ignores
finetune.labels_per_class, so changing the budget leaves its bytes (and DVC's pretrain) alone.
Everything is checked before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.params import Params
from prefine.sources import Source, read_source
from prefine.store import UNLABELED, ImageSet, write_split


def ingest(
    params: Params,
    out_dir: Path = Path("data"),
    metrics_file: Path = Path("metrics/ingest.json"),
) -> dict[str, int]:
    """Read, split, dedupe and select; write data/{unlabeled,labeled,test} and the counts."""
    source = read_source(params.ingest)
    shas = content_hashes(source.images)
    table = pd.DataFrame(
        {
            "row": np.arange(len(source)),
            "sha": shas,
            "label": source.labels.numpy(),
            "split": assign_splits(source.split, shas, params.ingest.test_fraction),
        }
    )
    kept, counts = dedupe(table)
    train = kept[kept["split"] == "train"]
    labeled = select_labeled(train, source.classes, params.finetune.labels_per_class, params.seed)
    test = kept[(kept["split"] == "test") & (kept["label"] != UNLABELED)]
    if test.empty:
        raise PrefineError(
            f"{params.ingest.path}: no labeled test images "
            f"(ingest.test_fraction = {params.ingest.test_fraction})"
        )
    counts = {
        "unlabeled": len(train),
        "labeled": len(labeled),
        "test": len(test),
        **counts,
        "unlabeled_test_dropped": int((kept["split"] == "test").sum()) - len(test),
        "classes": len(source.classes),
    }
    for name, rows, keep_labels in (
        ("unlabeled", train, False),
        ("labeled", labeled, True),
        ("test", test, True),
    ):
        write_split(
            Path(out_dir) / name,
            _image_set(source, rows, keep_labels),
            _manifest(source, rows, name, keep_labels),
        )
    with atomic_path(Path(metrics_file)) as tmp:
        tmp.write_text(json.dumps(counts, indent=2) + "\n")
    return counts


def content_hashes(images: torch.Tensor) -> list[str]:
    """sha256 hex of each image's shape and pixel bytes: the identity used to split and dedupe."""
    pixels = np.ascontiguousarray(images.numpy())
    prefix = "x".join(map(str, pixels.shape[1:])).encode() + b":"
    return [hashlib.sha256(prefix + image.tobytes()).hexdigest() for image in pixels]


def assign_splits(pinned: list[str | None], shas: list[str], test_fraction: float) -> list[str]:
    """Keep a source's own split; otherwise test iff the hash falls below test_fraction,
    so an image's split never changes when other images are added."""
    return [
        pin or ("test" if int(sha[:8], 16) / 2**32 < test_fraction else "train")
        for pin, sha in zip(pinned, shas, strict=True)
    ]


def dedupe(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep one copy of each content per split (the first labeled one, else the first) and drop
    train copies of test images, so no test image is seen in training.

    `table` has columns row, sha, label, split; the kept rows stay in source order.
    """
    ranked = table.assign(unlabeled=table["label"] == UNLABELED).sort_values(
        ["unlabeled", "row"], kind="stable"
    )
    first = ranked.drop_duplicates(["split", "sha"]).sort_values("row").drop(columns="unlabeled")
    in_test = first["sha"].isin(first.loc[first["split"] == "test", "sha"])
    across = (first["split"] == "train") & in_test
    labeled = table[table["label"] != UNLABELED]
    conflicts = labeled.groupby("sha")["label"].nunique() > 1
    counts = {
        "duplicates_within": len(table) - len(first),
        "duplicates_across": int(across.sum()),
        "conflicting_labels": int(conflicts.sum()),
    }
    return first[~across], counts


def select_labeled(
    train: pd.DataFrame, classes: list[str], per_class: int, seed: int
) -> pd.DataFrame:
    """Per class, the `per_class` labeled train images with the smallest sha256(f"{seed}:{sha}"):
    seeded, stratified, and unmoved by images added to other classes."""
    pool = train[train["label"] != UNLABELED]
    if pool.empty:
        raise PrefineError(
            "no labeled training images: finetune needs finetune.labels_per_class labeled "
            "images per class (label folders, manifest labels or IDX labels)"
        )
    have = pool["label"].value_counts()
    short = [
        f"'{name}' ({int(have.get(i, 0))})"
        for i, name in enumerate(classes)
        if have.get(i, 0) < per_class
    ]
    if short:
        raise PrefineError(
            f"finetune.labels_per_class = {per_class} is more than the labeled training images "
            f"of class {', '.join(short)}; lower finetune.labels_per_class or add labels"
        )
    keys = [hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest() for sha in pool["sha"]]
    ranked = pool.assign(key=keys).sort_values(["label", "key"])
    return ranked.groupby("label").head(per_class).drop(columns="key")


def _image_set(source: Source, rows: pd.DataFrame, keep_labels: bool) -> ImageSet:
    index = torch.from_numpy(rows["row"].to_numpy(dtype=np.int64, copy=True))
    labels = source.labels[index] if keep_labels else torch.full((len(index),), UNLABELED)
    return ImageSet(source.images[index], labels, list(source.classes))


def _manifest(source: Source, rows: pd.DataFrame, split: str, keep_labels: bool) -> pd.DataFrame:
    shas = rows["sha"].tolist()
    names = [
        source.classes[label] if keep_labels and label != UNLABELED else None
        for label in rows["label"].tolist()
    ]
    return pd.DataFrame(
        {
            "id": [sha[:16] for sha in shas],
            "sha256": shas,
            "label": pd.array(names, dtype="string"),
            "split": [split] * len(shas),
            "source": [source.origin[i] for i in rows["row"].tolist()],
        }
    )
