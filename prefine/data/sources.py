"""Readers that turn a dataset on disk into one in-memory Source, checking it as they go.

Every problem is a PrefineError naming the file (and row) to fix, raised before ingest writes
anything. Three layouts: Fashion-MNIST IDX files, an ImageFolder tree, a CSV/Parquet manifest.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

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
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
UNLABELED_FOLDER = "unlabeled"


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
    """Parse an unsigned-byte IDX file whose size must match its header exactly."""
    raw = _read_bytes(file)
    header = 4 + 4 * ndim
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
    expected = header + math.prod(dims)
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise PrefineError(
            f"{file}: {problem}: header promises {' x '.join(map(str, dims))} values "
            f"({expected} bytes with the header), found {len(raw)} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _read_bytes(file: Path) -> bytes:
    try:
        if file.suffix == ".gz":
            with gzip.open(file, "rb") as stream:
                return stream.read()
        return file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise PrefineError(f"{file}: cannot read ({exc})") from None


# --- images shared by folder and manifest ------------------------------------------------


def decode_images(paths: list[Path], image_size: int, channels: int) -> torch.Tensor:
    """Decode PNG/JPEG files to uint8 [N, C, S, S]; the one place images are decoded."""
    out = np.empty((len(paths), channels, image_size, image_size), np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise PrefineError(f"{path}: not a readable image ({exc})") from None
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, np.uint8)
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(out)


# --- ImageFolder -------------------------------------------------------------------------


def read_folder(
    root: Path,
    classes: list[str] | None = None,
    image_size: int = 28,
    channels: int = 1,
    limit: int | None = None,
) -> Source:
    """Read root/<class>/*.png|jpg and root/unlabeled/*; `limit` caps each folder (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise PrefineError(f"{root}: not a folder (ingest.path for source 'folder')")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [f.name for f in folders if f.name != UNLABELED_FOLDER]
    if classes is not None:
        for name in names:
            if name not in classes:
                raise PrefineError(
                    f"{root / name}: folder '{name}' is not one of ingest.classes "
                    f"({', '.join(classes)})"
                )
    order = list(classes) if classes is not None else names
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )[:limit]
        label = NO_LABEL if folder.name == UNLABELED_FOLDER else order.index(folder.name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise PrefineError(f"{root}: no PNG or JPEG images in its class or unlabeled/ folders")
    return Source(
        images=decode_images(paths, image_size, channels),
        labels=torch.tensor(labels, dtype=torch.int64),
        split=[None] * len(paths),
        origin=[p.relative_to(root).as_posix() for p in paths],
        classes=order,
    )


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
    texts = [_label_text(value) for value in table["label"]]
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


def _label_text(value: object) -> str | None:
    """A label as class-name text; NaN/None/blank = unlabeled, 3.0 (int column with gaps) = '3'."""
    if pd.isna(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip() or None


def _resolve(file: Path, base: Path, n: int, value: object) -> Path:
    """The image a manifest row names, refused if it is missing or escapes the data root."""
    if not isinstance(value, str) or not value.strip():
        raise PrefineError(f"{file}: {_row(n)}: path is empty or not text ({value!r})")
    target = (base / value).resolve()
    if not target.is_relative_to(base):
        raise PrefineError(f"{file}: {_row(n)}: path {value!r} lies outside the data root {base}")
    if not target.is_file():
        raise PrefineError(f"{file}: {_row(n)}: image {value!r} not found under {base}")
    return target
