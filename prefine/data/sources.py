"""Readers that turn a dataset on disk into one in-memory Source, checking it as they go.

Every problem is a PrefineError naming the file (and row) to fix, raised before ingest writes
anything. Three layouts: Fashion-MNIST IDX files, an ImageFolder tree (flat, or split into
train/ and test/), a CSV/Parquet manifest. Work stays bounded on hostile files: an IDX file is
read no further than its header promises, and that promise is capped (MAX_IDX_BYTES).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch

from prefine.data.decode import IMAGE_SUFFIXES, decode_images
from prefine.data.store import NO_LABEL
from prefine.errors import PrefineError
from prefine.params import IngestParams

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_IDX_BYTES = 2**28  # 256 MiB of pixels per IDX file: Fashion-MNIST's largest holds 47 MB
UNLABELED_FOLDER = "unlabeled"
SPLIT_FOLDERS = ("train", "test")
FOLDER_LAYOUTS = (
    "<class>/<image> folders (plus an optional unlabeled/), or those under train/ and test/"
)


@dataclass
class Source:
    """Images uint8 [N, C, H, W], labels int64 [N] (NO_LABEL = -1), and per image its pinned
    split ("train", "test", or None = decided by content hash) and where it came from."""

    images: torch.Tensor
    labels: torch.Tensor
    split: list[str | None]
    origin: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def read_source(p: IngestParams) -> Source:
    """Read the source params.ingest names; image_size/channels apply to folder and manifest."""
    path = Path(p.path)
    if p.source == "fashion-mnist":
        if p.classes is not None and p.classes != FASHION_CLASSES:
            raise PrefineError(
                "ingest.classes: leave it null for source 'fashion-mnist', or list exactly: "
                + ", ".join(FASHION_CLASSES)
            )
        return read_idx(path, p.limit)
    if p.source == "folder":
        return read_folder(path, p.classes, p.image_size, p.channels, p.limit)
    root = Path(p.root) if p.root is not None else None
    return read_manifest(path, root, p.classes, p.image_size, p.channels, p.limit)


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
    )


def _read_idx_split(folder: Path, split: str, limit: int | None) -> Source:
    image_file, label_file = (_find_idx(folder, name) for name in IDX_FILES[split])
    images = _read_idx_array(image_file, ndim=3)
    labels = _read_idx_array(label_file, ndim=1)
    if len(images) != len(labels):
        raise PrefineError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels"
        )
    bad = np.flatnonzero(labels >= len(FASHION_CLASSES))
    if bad.size:
        raise PrefineError(
            f"{label_file}: label {labels[bad[0]]} at index {bad[0]} is not a Fashion-MNIST "
            f"class (0-{len(FASHION_CLASSES) - 1})"
        )
    n = len(labels) if limit is None else min(limit, len(labels))
    return Source(
        images=torch.from_numpy(images[:n].copy()).unsqueeze(1),
        labels=torch.from_numpy(labels[:n].astype(np.int64)),
        split=[split] * n,
        origin=[f"{image_file.name}#{i}" for i in range(n)],
        classes=list(FASHION_CLASSES),
    )


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise PrefineError(
        f"{folder / name}: missing (nor {name}.gz); ingest.path needs all four IDX files"
    )


def _read_idx_array(file: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file whose size must match its header exactly, reading (and
    inflating) at most one byte more than the header promises, so a gzip bomb stays bounded."""
    header = 4 + 4 * ndim
    try:
        with gzip.open(file, "rb") if file.suffix == ".gz" else file.open("rb") as stream:
            dims = _idx_dims(file, stream, ndim)
            size = math.prod(dims)
            body = stream.read(size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise PrefineError(f"{file}: cannot read ({exc})") from None
    if len(body) != size:
        short = len(body) < size
        raise PrefineError(
            f"{file}: {'truncated' if short else 'has trailing bytes'}: header promises "
            f"{' x '.join(map(str, dims))} values ({header + size} bytes with the header), "
            + (f"found {header + len(body)} bytes" if short else "found more")
        )
    return np.frombuffer(body, np.uint8).reshape(dims)


def _idx_dims(file: Path, stream: BinaryIO, ndim: int) -> list[int]:
    """The dimensions an IDX header declares, checked before any pixel is read."""
    header = 4 + 4 * ndim
    raw = stream.read(header)
    if len(raw) < header:
        raise PrefineError(f"{file}: {len(raw)} bytes, too short for a {header}-byte IDX header")
    magic, expected_magic = int.from_bytes(raw[:4], "big"), 0x0800 + ndim
    if magic != expected_magic:
        raise PrefineError(
            f"{file}: magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if 0 in dims[1:]:
        raise PrefineError(f"{file}: header has a zero image size {dims[1:]}")
    if (size := math.prod(dims)) > MAX_IDX_BYTES:
        raise PrefineError(
            f"{file}: header promises {' x '.join(map(str, dims))} values "
            f"({size} bytes), over the {MAX_IDX_BYTES}-byte limit; refused unread"
        )
    return dims


# --- ImageFolder -------------------------------------------------------------------------


def read_folder(
    root: Path,
    classes: list[str] | None = None,
    image_size: int = 28,
    channels: int = 1,
    limit: int | None = None,
) -> Source:
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
    found = [(path, split) for folder, split in groups for path in _image_files(folder)[:limit]]
    paths = [path for path, _ in found]
    index = {name: i for i, name in enumerate(order)} | {UNLABELED_FOLDER: NO_LABEL}
    labels = [index[p.parent.name] for p in paths]
    return Source(
        images=decode_images(paths, image_size, channels),
        labels=torch.tensor(labels, dtype=torch.int64),
        split=[split for _, split in found],
        origin=[p.relative_to(root).as_posix() for p in paths],
        classes=order,
    )


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


def _image_files(folder: Path) -> list[Path]:
    """The visible files Pillow reads, sorted (a dot file such as macOS's ._a.png is metadata);
    none is an error saying what the folder holds instead."""
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
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
    root: Path | None = None,
    classes: list[str] | None = None,
    image_size: int = 28,
    channels: int = 1,
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
    paths = [_resolve(file, base, n, value) for n, value in enumerate(table["path"], start=1)]
    order = list(classes) if classes is not None else sorted({t for t in texts if t is not None})
    index = {name: i for i, name in enumerate(order)}
    return Source(
        images=decode_images(paths, image_size, channels),
        labels=torch.tensor(
            [NO_LABEL if t is None else index[t] for t in texts], dtype=torch.int64
        ),
        split=[None] * len(paths),
        origin=[str(value) for value in table["path"]],
        classes=order,
    )


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
