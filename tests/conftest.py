"""Shared fixtures: small real datasets, writers for the file formats the pipeline reads, and
one real Prefect server for the whole session."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import warm

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _share_the_cores() -> None:
    """Under pytest-xdist each worker (and every stage process it starts) gets its share of the
    cores: two torch processes that each spin a thread per core run many times slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores()


def _warm_stages() -> None:
    """Every Python process this pytest process starts checks for a warm server of its own
    (tests/warm.py); `PREFINE_TEST_WARM=` (empty) before pytest runs everything cold."""
    if os.environ.get(warm.ENV) != "":
        os.environ[warm.ENV] = f"prefine-warm-{os.getpid()}"
        path = warm.python_path(os.environ)
        os.environ["PYTHONPATH"] = os.pathsep.join(path if warm.SITE in path else [*path, warm.SITE])


_warm_stages()


@pytest.fixture(scope="session", autouse=True)
def warm_server() -> Iterator[None]:
    """The server stages, DVC and torchrun are forked from; until it is ready (its imports take a
    few seconds), they run cold."""
    if not os.environ.get(warm.ENV):
        yield
        return
    root = str(Path(__file__).resolve().parents[1])
    server = subprocess.Popen([sys.executable, warm.__file__, os.environ[warm.ENV], root])
    try:
        yield
    finally:
        server.kill()
        server.wait()


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (gzip when the name ends in .gz), header from the array shape."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """A PNG (or JPEG, by suffix) from uint8 [H, W] or [H, W, 3] pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


@pytest.fixture(scope="session")
def write_idx() -> Callable[[Path, np.ndarray], None]:
    return _write_idx


@pytest.fixture(scope="session")
def write_png() -> Callable[[Path, np.ndarray], None]:
    return _write_png


def _read_idx_head(file: Path, ndim: int, count: int) -> np.ndarray:
    """The first `count` records of a real IDX file, without decompressing the rest."""
    header = 4 + 4 * ndim
    with gzip.open(file, "rb") as stream:
        head = stream.read(header)
        dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        record = int(np.prod(dims[1:]))
        body = stream.read(count * record)
    return np.frombuffer(body, np.uint8).reshape([count, *dims[1:]])


@pytest.fixture(scope="session")
def fmnist_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four Fashion-MNIST IDX .gz files cut to 1200 train / 300 test images."""
    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: apt-get install -y dataset-fashion-mnist (bin/setup does)")
    folder = tmp_path_factory.mktemp("fashion-mnist")
    for prefix, count in (("train", 1200), ("t10k", 300)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            name = f"{prefix}-{kind}-ubyte.gz"
            _write_idx(folder / name, _read_idx_head(FASHION_MNIST / name, ndim, count))
    return folder


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect API (SQLite in a temp folder); subprocesses reach it through the env.
    Here in conftest.py, so the whole session shares one server: Prefect's client-side services
    (concurrency slot leases) stay bound to the first server a process talks to."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {key: os.environ.get(key) for key in ("PREFECT_HOME", "PREFECT_API_URL")}
    with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=90):
        os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=PREFECT_API_URL.value())
        yield PREFECT_API_URL.value()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture
def one_thread():
    """Tiny batches gain nothing from threads, and on a busy machine their spinning costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _log_streams_outlive_the_test():
    """A CLI run in-process (typer's CliRunner) sets Prefect's console handlers up on its own
    streams, which close when it returns; a later log line would then fail, and a flow that logs
    its prints would recurse on the failure. Point any handler left on a closed stream at stderr."""
    yield
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream(): it flushes the closed stream first
            if console := getattr(handler, "console", None):  # Prefect's handler writes through rich
                console.file = sys.stderr

