"""Image files decoded in parallel, once: the pixels are kept between ingests.

The cache (data/.ingest-cache/<setting>/ beside the splits; not a DVC output) has a folder per
decode setting (image_size, channels and the code of decode.py), holding chunk files of decoded
images (safetensors "images" uint8 [n, C, S, S]) and index.parquet: per file (path, size,
mtime_ns) its sha256, shown size and place (chunk, row). An ingest decodes only the files the
index does not know, with a pool of `workers` processes that each write their chunk, so pixels
never pass through the ingest process; the splits are then written from the chunks a shard at a
time (store.Records reads by pread). Memory stays flat whatever the size of the collection.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from safetensors.numpy import save_file

from prefine import fingerprint
from prefine.atomic import atomic_path
from prefine.data import decode
from prefine.data.store import Records, content_hashes

KEY = ["path", "size", "mtime_ns"]  # a file is known when all three match
INDEX = "index.parquet"
CHUNK_MAX = 256  # files per task: big enough to amortise a task
CHUNK_MIN = 16  # the last tasks shrink to this, so no core idles long while another finishes


@dataclass
class Decoded:
    """A source's images, decoded, as store.Pixels: row i is paths[i]; and their identities."""

    records: Records
    chunk: np.ndarray  # per row: which of records.files
    row: np.ndarray  # per row: which record in it
    shas: list[str]
    sizes: np.ndarray  # per row: (width, height) as shown, before resizing
    decoded: int  # how many files this call decoded (the rest came from the cache)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.row), *self.records.item)

    def __len__(self) -> int:
        return len(self.row)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.records.read(self.chunk[rows], self.row[rows])


def default_workers() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0))


def setting_folder(cache: Path, image_size: int, channels: int) -> Path:
    """Where decodes at this setting live; code changes in decode.py start a new folder."""
    code = fingerprint.file_sha256(Path(decode.__file__))
    return Path(cache) / f"{channels}x{image_size}-{fingerprint.of(code)[:12]}"


def decode_files(paths: list[Path], image_size: int, channels: int, cache: Path, workers: int) -> Decoded:
    """Every file of `paths` decoded (decode.decode_sized), the new ones with `workers` processes;
    a file that fails stops it with its PrefineError (what was decoded before stays cached)."""
    folder = setting_folder(cache, image_size, channels)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):
        files = _stat(paths)
        known = files.merge(_read_index(folder), on=KEY, how="left")
        new = known["sha256"].isna().to_numpy()
        print(f"ingest: decoding {int(new.sum())} of {len(files)} images ({len(files) - int(new.sum())} "
              f"unchanged, from the cache), {workers} process(es)", flush=True)
        fresh = _decode_new(files.loc[new, "path"].tolist(), image_size, channels, folder, workers)
        if new.any():
            known.loc[new, fresh.columns] = fresh.to_numpy()
        _write_index(folder, known)
    chunks = sorted(known["chunk"].unique())
    return Decoded(
        records=Records([folder / name for name in chunks]),
        chunk=np.searchsorted(chunks, known["chunk"].to_numpy()),
        row=known["row"].to_numpy(np.int64),
        shas=known["sha256"].tolist(),
        sizes=known[["width", "height"]].to_numpy(np.int64),
        decoded=int(new.sum()),
    )


def _stat(paths: list[Path]) -> pd.DataFrame:
    stats = [os.stat(p) for p in paths]
    return pd.DataFrame({"path": [str(p) for p in paths], "size": [s.st_size for s in stats],
                         "mtime_ns": [s.st_mtime_ns for s in stats]})


def _read_index(folder: Path) -> pd.DataFrame:
    file = folder / INDEX
    if file.is_file():
        return pd.read_parquet(file)
    return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in (
        ("path", str), ("size", "int64"), ("mtime_ns", "int64"), ("sha256", object), ("width", "int64"),
        ("height", "int64"), ("chunk", object), ("row", "int64"))})


def _write_index(folder: Path, table: pd.DataFrame) -> None:
    """Keep the entries of this source's files only, and delete the chunks none of them uses."""
    table = table.drop_duplicates(KEY).astype({"width": "int64", "height": "int64", "row": "int64"})
    with atomic_path(folder / INDEX) as tmp:
        table.to_parquet(tmp, index=False)
    used = set(table["chunk"])
    for chunk in folder.glob("chunk-*.safetensors"):
        if chunk.name not in used:
            chunk.unlink()


def _decode_new(paths: list[str], image_size: int, channels: int, folder: Path, workers: int) -> pd.DataFrame:
    """Decode `paths` into new chunks; one row per path (sha256, width, height, chunk, row)."""
    tasks = [(paths[start:end], image_size, channels, folder) for start, end in _spans(len(paths), workers)]
    if workers == 1 or len(tasks) <= 1:
        done = [decode_chunk(task) for task in tasks]
    else:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        try:
            done = list(pool.map(decode_chunk, tasks))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return pd.DataFrame([row for rows in done for row in rows],
                        columns=["sha256", "width", "height", "chunk", "row"])


def _spans(count: int, workers: int) -> list[tuple[int, int]]:
    """Task boundaries over `count` files, each task a quarter of a worker's share of what is left
    (CHUNK_MIN..CHUNK_MAX files): large tasks first, small ones last (guided scheduling)."""
    spans, start = [], 0
    while start < count:
        size = min(CHUNK_MAX, max(CHUNK_MIN, math.ceil((count - start) / (4 * workers))))
        spans.append((start, min(count, start + size)))
        start += size
    return spans


def decode_chunk(task: tuple[list[str], int, int, Path]) -> list[tuple[str, int, int, str, int]]:
    """A worker's job: decode files into one chunk file it writes; (sha256, width, height, chunk,
    row) per file. Numpy and Pillow only: no torch in a forked process."""
    paths, image_size, channels, folder = task
    images = np.empty((len(paths), channels, image_size, image_size), np.uint8)
    sizes = []
    for i, path in enumerate(paths):
        images[i], shown = decode.decode_sized(Path(path), image_size, channels)
        sizes.append(shown)
    name = f"chunk-{uuid.uuid4().hex}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file({"images": images}, str(tmp))
    return [(sha, w, h, name, i) for i, (sha, (w, h)) in enumerate(zip(content_hashes(images), sizes))]
