"""Stage ingest: one source in; an unlabeled pool, a labeled budget and a test split out.

Splits and the labeled choice come from content hashes, so an image keeps its place when the
dataset grows (a source's own split wins: Fashion-MNIST's t10k, a folder's train/ and test/).
The pool is every training image without its label and ignores finetune.labels_per_class, so
changing the budget leaves its bytes (and DVC's pretrain) alone. Everything is checked before
anything is written. Image files are decoded once, in parallel, into a cache beside the splits
(data/.ingest-cache, data/cache.py): a second ingest decodes only the files added or changed,
and each split is written a shard at a time from there, so memory stays flat at any size. A
split that only gained images keeps its shard files and gets the new images in shards appended
after them (store.write_split), so only their bytes are written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prefine import paths
from prefine.atomic import atomic_path
from prefine.data.sources import Source, read_source
from prefine.data.store import NO_LABEL, ImageSet, Rows, gather, write_split
from prefine.errors import PrefineError
from prefine.params import IngestParams, Params

SHOWN = 3  # images named in an error about a class
CACHE_NAME = ".ingest-cache"  # decoded images kept between ingests, in the data folder


def ingest(
    params: Params,
    out_dir: Path = paths.DATA_DIR,
    metrics_file: Path = paths.INGEST_METRICS_FILE,
) -> dict[str, int]:
    """Read, split, dedupe and select; write data/{unlabeled,labeled,test} and the counts."""
    pools = read_pools(params.ingest, Path(out_dir) / CACHE_NAME)
    per_class = params.finetune.labels_per_class
    labeled = pools.labeled(None if per_class == "all" else per_class, params.seed)
    pools.require_test()
    counts = {"unlabeled": len(pools.train), "labeled": len(labeled), "test": len(pools.test), **pools.counts}
    for name, rows, keep_labels in (
        ("unlabeled", pools.train, False),
        ("labeled", labeled, True),
        ("test", pools.test, True),
    ):
        pools.write(Path(out_dir) / name, name, rows, keep_labels)
    with atomic_path(Path(metrics_file)) as tmp:
        tmp.write_text(json.dumps(counts, indent=2) + "\n")
    return counts


@dataclass
class Pools:
    """A source as ingest splits it, in memory: `train` (deduped, labeled or not: the unlabeled
    pool, and where labeled sets are picked from) and `test` (labeled images only) are tables of
    source rows (row, sha, label, split). The label-budget study draws its many labeled sets
    from one read of the source through it."""

    source: Source
    train: pd.DataFrame
    test: pd.DataFrame
    counts: dict[str, int]  # dedupe counts, unlabeled test images dropped, classes
    params: IngestParams

    def require_test(self) -> None:
        """No labeled test image is an error: there would be nothing to evaluate on."""
        if self.test.empty:
            raise PrefineError(
                f"{self.params.path}: no labeled test images (ingest.test_fraction = {self.params.test_fraction})"
            )

    def require_classes(self) -> None:
        """Fine-tuning needs two classes or more, each with a labeled training image; a class
        without one is named with its images (often a mistyped label), not blamed on a budget."""
        found = [name for i, name in enumerate(self.source.classes) if (self.source.labels == i).any()]
        if len(found) < 2:
            raise PrefineError(
                f"{self.params.path}: {len(found)} class(es) with labeled images "
                f"({', '.join(found) or 'no labels found'}); fine-tuning needs at least two"
            )
        trained = set(self.train["label"].tolist())
        for i, name in enumerate(self.source.classes):
            if i not in trained:
                examples = self._examples(i)
                where = (
                    f"its labeled images ({examples}) all fell in the test split or copy one"
                    if examples
                    else "no image carries that label"
                )
                raise PrefineError(
                    f"{self.params.path}: class '{name}' has no labeled training image: "
                    f"{where}; fix the labels or add training images"
                )

    def labeled(self, per_class: int | None, seed: int, key: str = "finetune.labels_per_class") -> pd.DataFrame:
        """select_labeled on the train pool (None: every labeled image) once the budget `key`
        asks for fits each class; a class below it is named with its count (and its images
        when it has few: a mistyped label makes a class of one)."""
        have = self.train.loc[self.train["label"] != NO_LABEL, "label"].value_counts()
        short = [
            self._tally(i, int(have.get(i, 0)))
            for i in range(len(self.source.classes))
            if per_class is not None and have.get(i, 0) < per_class
        ]
        if short:
            raise PrefineError(
                f"{key} = {per_class} is more than the labeled training images "
                f"of class {', '.join(short)}; lower {key}, or fix or add labels"
            )
        return select_labeled(self.train, per_class, seed)

    def _tally(self, label: int, count: int) -> str:
        """A class and its count, with its images when it has few: 'Coatt' (1: Bag/0001.png)."""
        shown = f": {self._examples(label)}" if count <= SHOWN else ""
        return f"'{self.source.classes[label]}' ({count}{shown})"

    def _examples(self, label: int) -> str:
        """Where the first SHOWN source images with this label came from."""
        rows = torch.nonzero(self.source.labels == label).flatten()[:SHOWN].tolist()
        return ", ".join(self.source.origin[row] for row in rows)

    def images(self, rows: pd.DataFrame, keep_labels: bool = True) -> ImageSet:
        """`rows` in memory, as an ImageSet of tensors."""
        lazy = self._rows(rows, keep_labels)
        return ImageSet(gather(lazy.images, np.arange(len(lazy))), lazy.labels, lazy.classes)

    def write(self, folder: Path, split: str, rows: pd.DataFrame, keep_labels: bool) -> None:
        """`rows` as a data split on disk (store.write_split), named `split` in its manifest; the
        images are read a shard at a time, never gathered whole."""
        write_split(folder, self._rows(rows, keep_labels), _manifest(self.source, rows, split, keep_labels))

    def _rows(self, rows: pd.DataFrame, keep_labels: bool) -> ImageSet:
        index = rows["row"].to_numpy(dtype=np.int64, copy=True)
        labels = self.source.labels[index] if keep_labels else torch.full((len(index),), NO_LABEL)
        return ImageSet(Rows(self.source.images, index), labels, list(self.source.classes))


def read_pools(p: IngestParams, cache: Path = paths.DATA_DIR / CACHE_NAME) -> Pools:
    """Read the source (decoding into `cache`); hash, split and dedupe it (read_source checks the files)."""
    source = read_source(p, cache)
    shas = source.shas
    table = pd.DataFrame(
        {
            "row": np.arange(len(source)),
            "sha": shas,
            "label": source.labels.numpy(),
            "split": assign_splits(source.split, shas, p.test_fraction),
        }
    )
    kept, counts = dedupe(table)
    train = kept[kept["split"] == "train"]
    test = kept[(kept["split"] == "test") & (kept["label"] != NO_LABEL)]
    counts = {
        **counts,
        "unlabeled_test_dropped": int((kept["split"] == "test").sum()) - len(test),
        "classes": len(source.classes),
    }
    pools = Pools(source, train, test, counts, p)
    pools.require_classes()
    return pools


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
    ranked = table.assign(unlabeled=table["label"] == NO_LABEL).sort_values(
        ["unlabeled", "row"], kind="stable"
    )
    first = ranked.drop_duplicates(["split", "sha"]).sort_values("row").drop(columns="unlabeled")
    in_test = first["sha"].isin(first.loc[first["split"] == "test", "sha"])
    across = (first["split"] == "train") & in_test
    labeled = table[table["label"] != NO_LABEL]
    conflicts = labeled.groupby("sha")["label"].nunique() > 1
    counts = {
        "duplicates_within": len(table) - len(first),
        "duplicates_across": int(across.sum()),
        "conflicting_labels": int(conflicts.sum()),
    }
    return first[~across], counts


def select_labeled(train: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """Per class, the `per_class` labeled train images with the smallest sha256(f"{seed}:{sha}"):
    seeded, stratified, and unmoved by images added to other classes. None: every labeled image."""
    pool = train[train["label"] != NO_LABEL]
    keys = [hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest() for sha in pool["sha"]]
    ranked = pool.assign(key=keys).sort_values(["label", "key"])
    chosen = ranked if per_class is None else ranked.groupby("label").head(per_class)
    return chosen.drop(columns="key")


def _manifest(source: Source, rows: pd.DataFrame, split: str, keep_labels: bool) -> pd.DataFrame:
    shas = rows["sha"].tolist()
    names = [
        source.classes[label] if keep_labels and label != NO_LABEL else None
        for label in rows["label"].tolist()
    ]
    index = rows["row"].to_numpy()
    return pd.DataFrame(
        {
            "id": [sha[:16] for sha in shas],
            "sha256": shas,
            "label": pd.array(names, dtype="string"),
            "split": [split] * len(shas),
            "source": [source.origin[i] for i in index.tolist()],
            "width": source.sizes[index, 0],
            "height": source.sizes[index, 1],
        }
    )
