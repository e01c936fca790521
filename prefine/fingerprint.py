"""Short content hashes: what a saved training state or a model card says it came from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Of an array's contents: e.g. the pseudo-classes a pretraining learns, which follow the code
    that makes them as much as the params."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def of(*parts: Any) -> str:
    """sha256 of JSON-able parts (params sections, file hashes), order-sensitive."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
