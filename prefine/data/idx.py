"""Fashion-MNIST's IDX files, read and checked: work stays bounded on hostile files, as a file is
read no further than its header promises, and that promise is capped (MAX_IDX_BYTES)."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from prefine.errors import PrefineError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MAX_IDX_BYTES = 2**28  # 256 MiB of pixels per IDX file: Fashion-MNIST's largest holds 47 MB


def read_idx_pair(folder: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 [N, H, W], labels uint8 [N], the image file's name) of one split (train or
    test), plain or .gz; `limit` keeps the first N, after the whole files have been checked."""
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
    return images[:n], labels[:n], image_file.name


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
