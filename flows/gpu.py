"""GPU slots: a Prefect tag concurrency limit `gpu` bounds how many tasks train at once, and
a per-device file lock picks which device a slot-holder gets (CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from prefect import get_client
from prefect.exceptions import ObjectNotFound

GPU_TAG = "gpu"
LOCKS = Path(tempfile.gettempdir()) / "prefine-gpu-locks"  # machine-wide: all runs on this host


def visible_gpus() -> list[str]:
    """Device ids a stage may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists.
    (nvidia-smi, not torch: importing torch would cost the flow process seconds per run.)"""
    if (given := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def ensure_gpu_limit() -> int:
    """Create the `gpu` tag limit sized to the visible GPUs (at least 1) unless it exists;
    an existing limit is left alone (an operator may have sized it on purpose)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit
        except ObjectNotFound:
            size = max(1, len(visible_gpus()))
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=size)
            return size


@contextmanager
def hold_device(poll: float = 0.5) -> Iterator[str]:
    """A free visible device id ('' on a CPU-only host), held until the block ends.
    On one host Prefect's slot means one is free; the wait covers a limit shared by several hosts."""
    devices = visible_gpus()
    if not devices:
        yield ""
        return
    LOCKS.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            lock = FileLock(str(LOCKS / f"gpu-{device}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield device
            finally:
                lock.release()
            return
        time.sleep(poll)
