"""Readers that turn a dataset on disk into one Source, checking it as they go.

Every problem is a PrefineError naming the file (and row) to fix, raised before ingest writes
anything. Three layouts: Fashion-MNIST IDX files (read into memory, data/idx.py), an ImageFolder
tree (flat, or split into train/ and test/) and a CSV/Parquet manifest (both decoded in parallel
into the ingest cache, data/cache.py, and read from there: never whole in memory). Work stays
bounded on hostile files: an IDX file is read no further than its header promises, and an image
file's header is checked before it is decoded (decode.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import torch

from prefine.data.cache import decode_files, default_workers
from prefine.data.decode import IMAGE_SUFFIXES
from prefine.data.idx import FASHION_CLASSES, IDX_FILES, read_idx_pair
from prefine.data.store import NO_LABEL, Pixels, content_hashes
from prefine.errors import PrefineError
from prefine.params import IngestParams

UNLABELED_FOLDER = "unlabeled"
SPLIT_FOLDERS = ("train", "test")
FOLDER_LAYOUTS = (
    "<class>/<image> folders (plus an optional unlabeled/), or those under train/ and test/"
)


@dataclass
class Source:
    """Images uint8 [N, C, H, W] (a tensor, or Pixels in the ingest cache), labels int64 [N]
    (NO_LABEL = -1), and per image its pinned split ("train", "test", or None = decided by
    content hash), where it came from, its content hash (store.content_hashes) and its size as
    shown before ingest resized it (width, height)."""

    images: torch.Tensor | Pixels
    labels: torch.Tensor
    split: list[str | None]
    origin: list[str]
    classes: list[str]
    shas: list[str]
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def read_source(p: IngestParams, cache: Path) -> Source:
    """Read the source params.ingest names; image_size/channels apply to folder and manifest,
    whose files are decoded by ingest.workers processes into `cache` (data/cache.py)."""
    path = Path(p.path)
    if p.source == "fashion-mnist":
        if p.classes is not None and p.classes != FASHION_CLASSES:
            raise PrefineError(
                "ingest.classes: leave it null for source 'fashion-mnist', or list exactly: "
                + ", ".join(FASHION_CLASSES)
            )
        return read_idx(path, p.limit)
    decoding = Decoding(p.image_size, p.channels, cache, p.workers or default_workers())
    if p.source == "folder":
        return read_folder(path, decoding, p.classes, p.limit)
    root = Path(p.root) if p.root is not None else None
    return read_manifest(path, decoding, root, p.classes, p.limit)


@dataclass
class Decoding:
    """How a folder's or manifest's files are decoded: the stored size and channels, the cache
    the pixels go to, and how many processes decode."""

    image_size: int
    channels: int
    cache: Path
    workers: int = 1

    def decode(self, listing: pd.DataFrame, classes: list[str]) -> Source:
        """`listing` (path, label, split, origin), decoded (data/cache.py) into a Source."""
        decoded = decode_files(listing["path"].tolist(), self.image_size, self.channels, self.cache, self.workers)
        return Source(
            images=decoded,
            labels=torch.tensor(listing["label"].tolist(), dtype=torch.int64),
            split=listing["split"].tolist(),
            origin=listing["origin"].tolist(),
            classes=classes,
            shas=decoded.shas,
            sizes=decoded.sizes,
        )


# --- Fashion-MNIST IDX -------------------------------------------------------------------


def read_idx(folder: Path, limit: int | None = None) -> Source:
    """Read the four Fashion-MNIST IDX files (plain or .gz); t10k is the official test split.

    `limit` keeps the first N images of each file, after the whole file has been checked.
    """
    parts = [_read_idx_split(Path(folder), split, limit) for split in IDX_FILES]
    return Source(
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        split=[s for p in parts for s in p.split],
        origin=[o for p in parts for o in p.origin],
        classes=list(FASHION_CLASSES),
        shas=[sha for p in parts for sha in p.shas],
        sizes=np.concatenate([p.sizes for p in parts]),
    )


def _read_idx_split(folder: Path, split: str, limit: int | None) -> Source:
    images, labels, name = read_idx_pair(folder, split, limit)
    pixels = images[:, None]
    return Source(
        images=torch.from_numpy(pixels.copy()),
        labels=torch.from_numpy(labels.astype(np.int64)),
        split=[split] * len(labels),
        origin=[f"{name}#{i}" for i in range(len(labels))],
        classes=list(FASHION_CLASSES),
        shas=content_hashes(pixels),
        sizes=np.full((len(labels), 2), pixels.shape[-1:-3:-1], np.int64),
    )


# --- ImageFolder -------------------------------------------------------------------------


def read_folder(root: Path, decoding: Decoding, classes: list[str] | None = None, limit: int | None = None) -> Source:
    """Read root/<class>/* and root/unlabeled/* (split by hash later), or the same under
    root/train and root/test (split pinned); `limit` caps each folder (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise PrefineError(f"{root}: not a folder (ingest.path for source 'folder')")
    groups = _folder_groups(root)
    names = sorted({f.name for f, _ in groups} - {UNLABELED_FOLDER})
    for folder, _ in groups:
        if classes is not None and folder.name not in [*classes, UNLABELED_FOLDER]:
            raise PrefineError(
                f"{folder}: folder '{folder.name}' is not one of ingest.classes "
                f"({', '.join(classes)})"
            )
    order = list(classes) if classes is not None else names
    index = {name: i for i, name in enumerate(order)} | {UNLABELED_FOLDER: NO_LABEL}
    found = [(folder, split, name) for folder, split in groups for name in _image_files(folder)[:limit]]
    under = {folder: folder.relative_to(root).as_posix() for folder, _ in groups}
    listing = pd.DataFrame({
        "path": [folder / name for folder, _, name in found],
        "label": [index[folder.name] for folder, _, _ in found],
        "split": [split for _, split, _ in found],
        "origin": [f"{under[folder]}/{name}" for folder, _, name in found],
    })  # fmt: skip
    return decoding.decode(listing, order)


def _folder_groups(root: Path) -> list[tuple[Path, str | None]]:
    """Each image folder with the split it pins: train/ and test/ side by side (with at most an
    unlabeled/, whose images join train) pin theirs; any other tree pins none."""
    top = _subfolders(root)
    if not set(SPLIT_FOLDERS) <= {f.name for f in top} <= {*SPLIT_FOLDERS, UNLABELED_FOLDER}:
        return [(folder, None) for folder in top]
    pinned = [(folder, split) for split in SPLIT_FOLDERS for folder in _subfolders(root / split)]
    return pinned + [(folder, "train") for folder in top if folder.name == UNLABELED_FOLDER]


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders, sorted; none is an error saying what the folder holds instead."""
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise PrefineError(_layout_error(folder, "no class folders"))
    return found


def _image_files(folder: Path) -> list[str]:
    """The names of the visible files Pillow reads, sorted (a dot file such as macOS's ._a.png is
    metadata); none is an error saying what the folder holds instead. os.scandir: a directory
    entry knows its type, so listing needs no stat call per file."""
    with os.scandir(folder) as entries:
        files = sorted(
            entry.name for entry in entries
            if not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            and entry.is_file()
        )  # fmt: skip
    if not files:
        raise PrefineError(_layout_error(folder, "no image files"))
    return files


def _layout_error(folder: Path, problem: str, shown: int = 5) -> str:
    """One line: the folder, what it lacks, what it holds, and the layouts read_folder expects."""
    entries = sorted(p.name + "/" * p.is_dir() for p in folder.iterdir())
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    held = f"it holds {', '.join(entries[:shown])}{more}" if entries else "it is empty"
    return f"{folder}: {problem} ({held}); source 'folder' expects {FOLDER_LAYOUTS}"


# --- manifest ----------------------------------------------------------------------------


def read_manifest(
    file: Path,
    decoding: Decoding,
    root: Path | None = None,
    classes: list[str] | None = None,
    limit: int | None = None,
) -> Source:
    """Read a CSV/Parquet manifest (path,label); paths must stay inside root (default: its folder).

    An empty label means unlabeled; `limit` keeps the first N rows.
    """
    file = Path(file)
    table = _read_table(file)
    if limit is not None:
        table = table.head(limit)
    base = (Path(root) if root is not None else file.parent).resolve()
    if not base.is_dir():
        raise PrefineError(f"{base}: the manifest's data root is not a folder (ingest.root)")
    texts = [_label_text(file, n, value) for n, value in enumerate(table["label"], start=1)]
    if classes is not None:
        for n, text in enumerate(texts, start=1):
            if text is not None and text not in classes:
                raise PrefineError(
                    f"{file}: {_row(n)}: label {text!r} is not one of ingest.classes "
                    f"({', '.join(classes)})"
                )
    order = list(classes) if classes is not None else sorted({t for t in texts if t is not None})
    index = {name: i for i, name in enumerate(order)}
    listing = pd.DataFrame({
        "path": [_resolve(file, base, n, value) for n, value in enumerate(table["path"], start=1)],
        "label": [NO_LABEL if t is None else index[t] for t in texts],
        "split": [None] * len(texts),
        "origin": [str(value) for value in table["path"]],
    })  # fmt: skip
    return decoding.decode(listing, order)


def _read_table(file: Path) -> pd.DataFrame:
    if not file.is_file():
        raise PrefineError(f"{file}: manifest not found (ingest.path)")
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise PrefineError(f"{file}: a manifest must be a .csv or .parquet file")
    try:
        if suffix == ".csv":
            table = pd.read_csv(file, dtype={"path": str, "label": str})
        else:
            table = pd.read_parquet(file)
    except (ValueError, OSError) as exc:
        raise PrefineError(f"{file}: cannot read the manifest ({exc})") from None
    for column in ("path", "label"):
        if column not in table.columns:
            found = ", ".join(map(str, table.columns)) or "none"
            raise PrefineError(f"{file}: no '{column}' column (columns: {found})")
    if table.empty:
        raise PrefineError(f"{file}: the manifest has no rows")
    return table


def _row(n: int) -> str:
    return f"row {n} (data rows counted from 1, header excluded)"


def _shown(value: object, width: int = 120) -> str:
    """A value's repr on one line, cut in the middle when long: for one-line error messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= width else f"{text[: width // 2]}...{text[-width // 2 :]}"


def _label_text(file: Path, n: int, value: object) -> str | None:
    """A label as class-name text; NaN/None/blank = unlabeled, 3.0 (int column with gaps) = '3'.
    A list, dict or other non-scalar label is an error naming its row."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    if not isinstance(value, str | int | float | np.number):
        raise PrefineError(
            f"{file}: {_row(n)}: label {_shown(value)} has type {type(value).__name__}; "
            "a label is text or a number"
        )
    if isinstance(value, float | np.floating) and value.is_integer():
        return str(int(value))
    return str(value).strip() or None


def _resolve(file: Path, base: Path, n: int, value: object) -> Path:
    """The image a manifest row names, refused if it is not a usable path, is missing, or
    escapes the data root."""
    where = f"{file}: {_row(n)}: path {_shown(value)}"
    if not isinstance(value, str) or not value.strip():
        raise PrefineError(f"{where} is empty or not text")
    if "\0" in value:
        raise PrefineError(f"{where} holds a NUL byte")
    if _too_long(base, value):
        raise PrefineError(f"{where} is longer than the OS allows for a file name or path")
    target = (base / value).resolve()
    if not target.is_relative_to(base):
        raise PrefineError(f"{where} lies outside the data root {base}")
    if not target.is_file():
        raise PrefineError(f"{file}: {_row(n)}: image {_shown(value)} not found under {base}")
    return target


def _too_long(base: Path, value: str) -> bool:
    """Whether the OS would refuse base/value as too long (ENAMETOOLONG): a name or the path."""
    longest = max((len(os.fsencode(part)) for part in PurePath(value).parts), default=0)
    path_max, name_max = (os.pathconf(base, key) for key in ("PC_PATH_MAX", "PC_NAME_MAX"))
    return len(os.fsencode(base / value)) >= path_max or longest > name_max
