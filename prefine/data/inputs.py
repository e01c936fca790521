"""The pipeline's view of its inputs: every file the ingest stage reads, summarised in
inputs.json, a dep of the ingest stage.

DVC hashes `ingest.path` itself, but it does not walk into symlinked folders and never sees the
images a manifest names. This index does: each source file's path, size and mtime (following
symlinks that stay inside the data root; one that leaves it is refused, as the manifest refuses
such paths), hashed into one line. `prefine index` (and every `prefine` command that runs the
pipeline) refreshes it, so an added, removed or changed image reruns ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prefine.atomic import atomic_path
from prefine.data.sources import IDX_FILES, _read_table, _resolve
from prefine.errors import PrefineError
from prefine.params import IngestParams


def source_files(p: IngestParams, cwd: Path = Path(".")) -> tuple[Path, list[Path]]:
    """The source's root (relative paths are taken from `cwd`, the project) and every file ingest
    reads for `p`, sorted; a missing source is an error naming ingest.path."""
    path = cwd / p.path
    if not path.exists():
        raise PrefineError(f"{path}: not found (ingest.path)")
    if p.source == "fashion-mnist":
        names = {n for pair in IDX_FILES.values() for n in pair}
        return path, sorted(f for f in path.iterdir() if f.is_file() and f.name.removesuffix(".gz") in names)
    if p.source == "folder":
        return path, walk(path)
    base = (cwd / p.root if p.root is not None else path.parent).resolve()
    named = {_resolve(path, base, n, value) for n, value in enumerate(_read_table(path)["path"], start=1)}
    return base, [path.resolve(), *sorted(named)]


def walk(root: Path) -> list[Path]:
    """The files under `root` as ingest sees them, following symlinked folders that stay inside
    it (DVC does not follow them) but never one that loops back to a folder above it; a symlink
    whose target leaves the root is refused, naming it."""
    base = root.resolve()
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder).resolve()
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(base):
                raise PrefineError(f"{entry}: a symlink to {entry.resolve()}, outside the data root {base} "
                                   "(ingest.path); copy the images in, or point ingest.path at a folder holding both")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not here.is_relative_to((Path(folder) / d).resolve()))
        found.extend(Path(folder) / f for f in files if not f.startswith("."))
    return sorted(found)


def summarize(p: IngestParams, cwd: Path = Path(".")) -> dict:
    """One line per source file (path under the source root, size, mtime), hashed: what DVC
    compares between runs. The same from the project root and from a stage run there."""
    root, files = source_files(p, cwd)
    digest = hashlib.sha256()
    total = 0
    for file in files:
        stat = file.stat()
        total += stat.st_size
        digest.update(f"{os.path.relpath(file, root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return {"source": p.source, "path": str(p.path), "files": len(files), "bytes": total, "sha256": digest.hexdigest()}


def refresh(p: IngestParams, target: Path, cwd: Path = Path(".")) -> bool:
    """Rewrite `target` when the inputs differ from what it says; return whether they did."""
    text = json.dumps(summarize(p, cwd), indent=2) + "\n"
    if target.is_file() and target.read_text() == text:
        return False
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return True
