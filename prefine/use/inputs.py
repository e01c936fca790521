"""Sources walked into batches of (path, image or error), a batch at a time, in a fixed order.

A source is a folder (recursively, sorted: every file of a format the ingest decode reads), a
CSV/Parquet manifest with a `path` column (paths relative to the manifest's folder), an image
file, or a prefine data split (data/test: its shards hold images already decoded at ingest; a
row's path is the manifest's `source`, where ingest read it from). Files are decoded by the
ingest decode, so they get the size, channels and pixels training saw. A file that can't be
decoded becomes an error row; a source that can't be read at all is a PrefineError.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from prefine.data.decode import IMAGE_SUFFIXES, decode_image
from prefine.data.store import read_split_manifest
from prefine.errors import PrefineError
from prefine.models.nets import EncoderSpec

MANIFEST_SUFFIXES = (".csv", ".parquet")
MANIFEST_CHUNK = 65536  # manifest rows read at a time
Loader = Callable[[], np.ndarray]  # one image, uint8 [C, S, S]; raises PrefineError
Entry = tuple[str, Loader]


@dataclass
class Batch:
    """Consecutive inputs: each path, its error (None when it decoded), and the decoded images
    (uint8 [n_ok, C, S, S]) in path order, without the failed ones."""

    paths: list[str]
    errors: list[str | None]
    images: torch.Tensor

    @property
    def failed(self) -> int:
        return sum(error is not None for error in self.errors)


def count(sources: list[Path], spec: EncoderSpec) -> int:
    """How many inputs the sources hold, checking each can be read (before any output is written)."""
    total = sum(_split_size(s, spec) if _is_split(s) else sum(1 for _ in entries(s, spec)) for s in sources)
    if total == 0:
        raise PrefineError(f"no images in {', '.join(map(str, sources))}")
    return total


def batches(sources: Iterable[Path], spec: EncoderSpec, batch_size: int) -> Iterator[Batch]:
    """The inputs of every source in order, `batch_size` at a time. Decoding stays on this thread:
    the decode's bomb guard sets warning filters, which are process-wide."""
    stream = itertools.chain.from_iterable(entries(s, spec) for s in sources)
    shape = (0, spec["channels"], spec["image_size"], spec["image_size"])
    while chunk := list(itertools.islice(stream, batch_size)):
        loaded = [_attempt(load) for _, load in chunk]
        images = [image for image, _ in loaded if image is not None]
        yield Batch([name for name, _ in chunk], [error for _, error in loaded],
                    torch.from_numpy(np.stack(images) if images else np.empty(shape, np.uint8)))


def _attempt(load: Loader) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, why) for an input that can't be decoded: the batch goes on."""
    try:
        return load(), None
    except PrefineError as exc:
        return None, str(exc)


def entries(source: Path, spec: EncoderSpec) -> Iterator[Entry]:
    """(path, loader) for every input of one source, without decoding anything yet."""
    source = Path(source)
    if _is_split(source):
        yield from _split_entries(source, spec)
    elif source.is_dir():
        yield from _folder_entries(source, spec)
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        yield from _manifest_entries(source, spec)
    elif source.is_file():
        yield str(source), partial(_decode, source, spec)
    else:
        raise PrefineError(f"{source}: no such file or folder")


def _decode(path: Path, spec: EncoderSpec) -> np.ndarray:
    """One file through the ingest decode, so the model sees pixels as it did in training."""
    return decode_image(path, spec["image_size"], spec["channels"])


def _failure(message: str) -> NoReturn:
    """The loader of a row that names no file: it fails like an unreadable one, as an error row."""
    raise PrefineError(message)


def _folder_entries(root: Path, spec: EncoderSpec) -> Iterator[Entry]:
    """Image files under root, sorted per folder; os.walk keeps one folder's listing in memory."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES:
                yield str(path), partial(_decode, path, spec)


def _manifest_entries(file: Path, spec: EncoderSpec) -> Iterator[Entry]:
    """One entry per manifest row; an empty path is that row's error, not the whole run's."""
    for n, value in enumerate(_manifest_paths(file), start=1):
        if isinstance(value, str) and value.strip():
            path = file.parent / value
            yield str(path), partial(_decode, path, spec)
        else:
            yield f"{file}#{n}", partial(_failure, f"{file}: row {n}: path is empty ({value!r})")


def _manifest_paths(file: Path) -> Iterator[object]:
    """The `path` column, MANIFEST_CHUNK rows at a time."""
    if not file.is_file():
        raise PrefineError(f"{file}: manifest not found")
    try:
        if file.suffix.lower() == ".csv":
            chunks = pd.read_csv(file, usecols=["path"], dtype={"path": str}, chunksize=MANIFEST_CHUNK)
            for chunk in chunks:
                yield from chunk["path"].tolist()
        else:
            table = pq.ParquetFile(file)
            if "path" not in table.schema_arrow.names:
                raise ValueError(f"no 'path' column (columns: {', '.join(table.schema_arrow.names)})")
            for batch in table.iter_batches(MANIFEST_CHUNK, columns=["path"]):
                yield from batch.column(0).to_pylist()
    except (ValueError, OSError) as exc:  # pandas' missing column and pyarrow's errors are ValueErrors
        raise PrefineError(f"{file}: cannot read the manifest ({exc})") from None


def _is_split(source: Path) -> bool:
    """A prefine data split (store.write_split) is known by its meta.json."""
    return (Path(source) / "meta.json").is_file()


def _split_size(folder: Path, spec: EncoderSpec) -> int:
    """The split's image count, once its image shape is known to be the model's."""
    meta = json.loads((folder / "meta.json").read_text())
    expected = [spec["channels"], spec["image_size"], spec["image_size"]]
    if meta["shape"] != expected:
        raise PrefineError(f"{folder}: images of shape {meta['shape']}, the model takes {expected}")
    return meta["count"]


def _split_entries(folder: Path, spec: EncoderSpec) -> Iterator[Entry]:
    """A split's images one shard at a time (store.SHARD_SIZE images in memory at most)."""
    _split_size(folder, spec)
    names = iter(read_split_manifest(folder)["source"].tolist())
    for shard in sorted(folder.glob("shard-*.safetensors")):
        for image in load_file(str(shard))["images"]:
            yield next(names), image.numpy
