"""The on-disk form of a split (data/unlabeled, data/labeled, data/test), read without loading it.

A split folder holds:
- shard-NNNNN.safetensors: "images" uint8 [n, C, S, S] and "labels" int64 [n]. safetensors (no
  pickle) stores each tensor as raw bytes at an offset its header gives, so an image is one
  fixed-size record that a reader fetches with one pread: nothing is mapped or loaded whole, and a
  trainer's memory does not grow with the split (SplitReader).
- manifest.parquet: one row per image, in storage order (id, sha256, label, split, source, width,
  height: the file's size before ingest resized it).
- meta.json: class names, count, image shape.

A split written afresh goes to shards by content hash: bits 32-63 of the sha256 (the test split
is chosen by bits 0-31) pick one of a power-of-two number of shards, as many as keep a shard near
SHARD_BYTES, so the same images give the same bytes whatever came before. Within a shard images
keep the order they came in, so a split of one shard (Fashion-MNIST's pool) is stored, and
batched, in source order.

Rewriting a split that only gains images appends: its shards stay as they are (hard links: the
same files, bytes and mtimes, so DVC hashes and pushes none of them again) and the new images go
to new shards after them, in the order they came; by hash, 1,000 images added to 100,000 would
touch every shard. The split's bytes then depend on its history (a fresh write of the same images
lays them out by hash), and a split that loses or changes a row, or whose appended shards would
make it twice the files of a fresh layout, is laid out afresh (compacted). DVC deletes a stage's
outputs before running it unless they are `persist: true`, so under `dvc repro` ingest appends
only to persistent outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from prefine.atomic import atomic_path
from prefine.errors import PrefineError

SHARD_BYTES = 64 * 2**20  # target shard size; Fashion-MNIST's 60,000-image pool fits one
NO_LABEL = -1


class Pixels(Protocol):
    """Images [N, C, H, W] uint8 that can be read a few rows at a time (on disk or in memory)."""

    shape: tuple[int, ...]

    def __len__(self) -> int: ...

    def take(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W] (a tensor, or Pixels read on demand when ingest writes a
    split), labels as int64 [N] (NO_LABEL = -1), class names."""

    images: torch.Tensor | Pixels
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `rows`: what the training loop batches."""
        return gather(self.images, rows), self.labels[rows]


def gather(images: torch.Tensor | Pixels, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Rows of images held in memory or read from disk, as a uint8 tensor."""
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(rows)]
    return torch.from_numpy(images.take(np.asarray(rows)))


@dataclass
class Rows:
    """Some rows of images (a tensor or Pixels) as Pixels, read only when taken: what ingest hands
    write_split, so a split is never gathered whole in memory."""

    images: torch.Tensor | Pixels
    index: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return gather(self.images, self.index[np.asarray(rows)]).numpy()


def content_hashes(images: np.ndarray) -> list[str]:
    """sha256 hex of each image's shape and pixel bytes ([N, C, H, W] in): the identity that
    splits, dedupes and shards."""
    pixels = np.ascontiguousarray(images)
    prefix = "x".join(map(str, pixels.shape[1:])).encode() + b":"
    return [hashlib.sha256(prefix + image.tobytes()).hexdigest() for image in pixels]


def shard_of(shas: pd.Series, count: int) -> np.ndarray:
    """The shard of each image among `count` (a power of two): bits 32-63 of its sha256."""
    return (shas.str.slice(8, 16).apply(int, base=16).to_numpy(np.int64) * count) >> 32


def shard_count(images: int, record_bytes: int) -> int:
    """Shards for a split: a power of two, so a split that grows keeps its layout until it doubles."""
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(images * record_bytes / SHARD_BYTES)))))


def write_split(folder: Path, data: ImageSet, manifest: pd.DataFrame) -> None:
    """Write shards, manifest and meta atomically; manifest rows (with a sha256 column) match the
    images in order. A split that only gains images keeps its shards as they are and gets the new
    ones in shards after them (stored_rows says when); any other is laid out anew by content hash.
    The manifest is written in storage order (shard by shard)."""
    if len(manifest) != len(data):
        raise ValueError(f"{folder}: manifest has {len(manifest)} rows for {len(data)} images")
    manifest = manifest.reset_index(drop=True)
    record = math.prod(data.shape[1:]) + 8  # an image and its label
    stored = stored_rows(Path(folder), data, manifest, record)
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir(parents=True)
        if stored is None:
            order = _lay_out(tmp, data, manifest["sha256"], record)
        else:
            order = _append(Path(folder), tmp, data, stored, record)
        manifest.iloc[order].reset_index(drop=True).to_parquet(tmp / "manifest.parquet", index=False)
        meta = {"classes": data.classes, "count": len(data), "shape": list(data.shape[1:])}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def stored_rows(folder: Path, data: ImageSet, manifest: pd.DataFrame, record: int) -> np.ndarray | None:
    """The row of `manifest` of each image stored in `folder`, in storage order, when the split
    there only lacks images to be this one: every stored row still in it, unchanged (manifest
    columns, label, image shape) and in the order it came in within its shard, and the appended
    shards would leave at most twice the files a fresh layout has. None: lay the split out anew
    (no split there yet, a row removed, changed or moved, many small additions to compact, or a
    split that can't be read)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        reader, old = SplitReader(folder), read_split_manifest(folder)
    except (PrefineError, OSError, ValueError):
        return None
    shas = manifest["sha256"]
    if list(reader.meta["shape"]) != list(data.shape[1:]) or len(old) != len(reader) or not shas.is_unique:
        return None
    rows = pd.Index(shas).get_indexer(old["sha256"])
    shard = np.searchsorted(reader.starts, np.arange(len(rows)), side="right")
    if (rows < 0).any() or ((np.diff(rows) < 0) & (np.diff(shard) == 0)).any():
        return None
    if not old.equals(_as_stored(manifest.iloc[rows])):
        return None
    if not torch.equal(data.labels[torch.from_numpy(rows)], reader.labels):
        return None
    files = len(reader.records.files) + math.ceil((len(data) - len(rows)) * record / SHARD_BYTES)
    return rows if files <= 2 * shard_count(len(data), record) else None


def _as_stored(manifest: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows as they read back from parquet: comparable with a stored manifest."""
    buffer = io.BytesIO()
    manifest.reset_index(drop=True).to_parquet(buffer, index=False)
    return pd.read_parquet(buffer)


def _lay_out(tmp: Path, data: ImageSet, shas: pd.Series, record: int) -> np.ndarray:
    """Every image into its shard by content hash (shard_of); the rows in storage order."""
    shard = shard_of(shas, shard_count(len(data), record))
    order = np.argsort(shard, kind="stable")
    for n in np.unique(shard).tolist():
        _write_shard(tmp / f"shard-{n:05d}.safetensors", data, order[shard[order] == n])
    return order


def _append(folder: Path, tmp: Path, data: ImageSet, stored: np.ndarray, record: int) -> np.ndarray:
    """The shards of `folder` kept in `tmp` (their bytes and mtimes as they were), then the rows
    not `stored` there in manifest order, in new shards of up to SHARD_BYTES numbered after them;
    the rows in storage order."""
    kept = sorted(folder.glob("shard-*.safetensors"))
    for file in kept:
        _keep(file, tmp / file.name)
    added = np.setdiff1d(np.arange(len(data)), stored)
    per_shard = max(1, SHARD_BYTES // record)
    first = int(kept[-1].stem.removeprefix("shard-")) + 1 if kept else 0
    for n, start in enumerate(range(0, len(added), per_shard), first):
        _write_shard(tmp / f"shard-{n:05d}.safetensors", data, added[start : start + per_shard])
    return np.concatenate([stored, added])


def _keep(file: Path, to: Path) -> None:
    """`file` at `to` with its bytes and mtime: a hard link (no copy), a copy where links fail."""
    try:
        os.link(file, to)
    except OSError:
        shutil.copy2(file, to)


def _write_shard(file: Path, data: ImageSet, rows: np.ndarray) -> None:
    images, labels = data.take(torch.from_numpy(rows))
    save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(file))


def tensors_in(file: Path) -> dict[str, tuple[int, list[int]]]:
    """{name: (byte offset, shape)} of the raw tensors in a safetensors file, from its header; a
    file shorter or longer than its header says is refused, naming it."""
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise PrefineError(f"{file}: not a readable shard ({exc}); run ingest again") from None
    header.pop("__metadata__", None)
    end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if file.stat().st_size != 8 + size + end:
        raise PrefineError(f"{file}: truncated or damaged ({file.stat().st_size} bytes, its header says "
                           f"{8 + size + end}); run ingest again")
    return {name: (8 + size + entry["data_offsets"][0], entry["shape"]) for name, entry in header.items()}


class Records:
    """Fixed-size uint8 records ("images") in safetensors files, read by (file, index) with
    pread: the pages read stay in the page cache, not in this process's resident memory."""

    def __init__(self, files: list[Path]) -> None:
        self.files = list(files)
        located = [tensors_in(f)["images"] for f in self.files]
        self.offsets = [offset for offset, _ in located]
        self.counts = np.array([shape[0] for _, shape in located], np.int64)
        self.item = tuple(located[0][1][1:]) if located else ()
        self.record = math.prod(self.item)

    def read(self, file: np.ndarray, index: np.ndarray) -> np.ndarray:
        """uint8 [len(index), *item]: record index[i] of files[file[i]], each one pread."""
        out = np.empty((len(index), self.record), np.uint8)
        for f in np.unique(file).tolist():
            path = self.files[f]
            with open(path, "rb") as stream:
                fd = stream.fileno()
                for i in np.flatnonzero(file == f).tolist():
                    if os.preadv(fd, [out[i]], self.offsets[f] + int(index[i]) * self.record) != self.record:
                        raise PrefineError(f"{path}: truncated (record {index[i]} is past its end); run ingest again")
        return out.reshape(len(index), *self.item)


class SplitReader:
    """A split on disk as Pixels: images read a batch at a time, labels (8 bytes each) in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.meta = _meta(self.folder)
        self.classes = list(self.meta["classes"])
        self.records = Records(sorted(self.folder.glob("shard-*.safetensors")))
        self.starts = np.concatenate([[0], np.cumsum(self.records.counts)])
        self.labels = torch.cat([_labels(f) for f in self.records.files] or [torch.zeros(0, dtype=torch.int64)])
        if self.starts[-1] != self.meta["count"]:
            raise PrefineError(f"{self.folder}: {self.starts[-1]} images on disk, meta.json says "
                               f"{self.meta['count']}; run ingest again")
        self.shape = (int(self.meta["count"]), *self.meta["shape"])

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        file = np.searchsorted(self.starts, rows, side="right") - 1
        return self.records.read(file, rows - self.starts[file])

    def __getitem__(self, key: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows (a slice or indices) as a uint8 tensor: reads like the tensor read_split gives."""
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        return torch.from_numpy(self.take(rows))


def _meta(folder: Path) -> dict:
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise PrefineError(f"{folder}: not a prefine data split (no meta.json); run ingest")
    return json.loads(meta_file.read_text())


def _labels(file: Path) -> torch.Tensor:
    offset, shape = tensors_in(file)["labels"]
    return torch.from_numpy(np.fromfile(file, dtype="<i8", count=shape[0], offset=offset))


def open_split(folder: Path) -> ImageSet:
    """A split whose images stay on disk (read per batch); for splits of any size."""
    reader = SplitReader(folder)
    return ImageSet(reader, reader.labels, reader.classes)


def read_split(folder: Path) -> ImageSet:
    """A split loaded whole into memory (a tensor): for the small ones, or small collections."""
    reader = SplitReader(folder)
    images = torch.from_numpy(reader.take(np.arange(len(reader))).reshape(reader.shape))
    return ImageSet(images, reader.labels, reader.classes)


def read_split_manifest(folder: Path) -> pd.DataFrame:
    """The split's parquet manifest: one row per image in storage order (id, sha256, label, split,
    source, width, height)."""
    return pd.read_parquet(Path(folder) / "manifest.parquet")
