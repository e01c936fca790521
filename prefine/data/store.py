"""The on-disk form of a split (data/unlabeled, data/labeled, data/test).

uint8 image shards in safetensors (no pickle) plus a parquet manifest with one row per image
(id, sha256, label, split, source) and meta.json with the class names: the fast path keeps
images as uint8 tensors in memory end to end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from prefine.atomic import atomic_path
from prefine.errors import PrefineError

SHARD_SIZE = 16384
NO_LABEL = -1


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W], labels as int64 [N] (NO_LABEL = -1), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def write_split(folder: Path, data: ImageSet, manifest: pd.DataFrame) -> None:
    """Write shards, manifest and meta atomically; the manifest rows match the images in order."""
    if len(manifest) != len(data):
        raise ValueError(f"{folder}: manifest has {len(manifest)} rows for {len(data)} images")
    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir(parents=True)
        for n, start in enumerate(range(0, max(len(data), 1), SHARD_SIZE)):
            stop = start + SHARD_SIZE
            save_file(
                {
                    "images": data.images[start:stop].contiguous(),
                    "labels": data.labels[start:stop].contiguous(),
                },
                str(tmp / f"shard-{n:05d}.safetensors"),
            )
        manifest.reset_index(drop=True).to_parquet(tmp / "manifest.parquet", index=False)
        meta = {"classes": data.classes, "count": len(data), "shape": list(data.images.shape[1:])}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_split(folder: Path) -> ImageSet:
    """Load a split written by write_split; a missing or half-written folder is a clear error."""
    folder = Path(folder)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise PrefineError(f"{folder}: not a prefine data split (no meta.json); run ingest")
    meta = json.loads(meta_file.read_text())
    shards = [load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))]
    images = torch.cat([s["images"] for s in shards])
    labels = torch.cat([s["labels"] for s in shards])
    if len(labels) != meta["count"]:
        raise PrefineError(f"{folder}: {len(labels)} images on disk, meta.json says {meta['count']}; run ingest again")
    return ImageSet(images, labels, list(meta["classes"]))


def read_split_manifest(folder: Path) -> pd.DataFrame:
    """The split's parquet manifest: one row per image (id, sha256, label, split, source)."""
    return pd.read_parquet(Path(folder) / "manifest.parquet")
