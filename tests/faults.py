"""Failure injection (and other instruments) for the tests, kept out of product code: a
pretraining crashes once, right after it saved epoch 1 (the state a retry must resume from); rank
1 of a data-parallel run is killed once; float64 as the default dtype.

In-process: `crash_once(marker)` patches the training loop. In DVC stage subprocesses (Prefect
flow tests): `subprocess_env(marker)` puts tests/fault_site on PYTHONPATH, whose sitecustomize
installs the same patch when the loop module is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

MARKER_ENV = "PREFINE_TEST_CRASH_ONCE"
KILL_ENV = "PREFINE_TEST_KILL_RANK1_ONCE"
FLOAT64_ENV = "PREFINE_TEST_FLOAT64"
LOOP = "prefine.training.loop"
SITE = Path(__file__).resolve().parent / "fault_site"


def patch_loop(loop: ModuleType, marker: Path) -> None:
    """Make loop._save raise once (creating `marker`) after saving a pretraining's epoch 1."""
    original = loop._save

    def save(model, optimizer, schedule, run, at):  # noqa: ANN001 - same signature as loop._save
        original(model, optimizer, schedule, run, at)
        if (at.epoch, at.batch) == (1, 0) and run.desc == "pretrain" and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure after epoch 1 ({MARKER_ENV}={marker})")

    loop._save = save


def crash_once(monkeypatch, marker: Path) -> None:  # noqa: ANN001 - pytest's MonkeyPatch
    import prefine.training.loop as loop

    monkeypatch.setattr(loop, "_save", loop._save)  # restored after the test
    patch_loop(loop, marker)


def patch_rank_kill(loop: ModuleType, marker: Path) -> None:
    """Make rank 1 of a data-parallel run SIGKILL itself once (creating `marker`), right after
    the first save in the middle of an epoch: torchrun must restart the group, which resumes."""
    import torch.distributed

    original = loop._Trainer.save

    def save(self, at):  # noqa: ANN001 - same signature as _Trainer.save
        original(self, at)
        if at.batch > 0 and not marker.exists():
            from prefine import distributed

            torch.distributed.barrier()  # every rank is here: rank 0's save is on disk
            if distributed.rank() == 1:
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)

    loop._Trainer.save = save


def subprocess_env(marker: Path | None = None, env: dict[str, str] | None = None, kill_rank: Path | None = None,
                   float64: bool = False) -> dict[str, str]:
    """The environment for a subprocess with these instruments: a pretraining crash once
    (`marker`), rank 1 killed once (`kill_rank`), float64 as torch's default dtype (`float64`:
    runs on different numbers of processes then agree to float64 precision)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), env.get("PYTHONPATH")]))
    for name, value in ((MARKER_ENV, marker), (KILL_ENV, kill_rank), (FLOAT64_ENV, float64 or None)):
        if value is not None:
            env[name] = str(value)
    return env


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the loop module as it is first imported, so processes that never train pay nothing."""

    def __init__(self, patch: Callable[[ModuleType], None]) -> None:
        self.patch = patch

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol
        if name != LOOP:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            self.patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install_from_env() -> None:
    if os.environ.get(FLOAT64_ENV):
        import torch

        torch.set_default_dtype(torch.float64)
    patches = [(patch, Path(os.environ[name])) for name, patch in ((MARKER_ENV, patch_loop), (KILL_ENV, patch_rank_kill))
               if os.environ.get(name)]
    if patches:
        sys.meta_path.insert(0, _PatchOnImport(lambda loop: [patch(loop, marker) for patch, marker in patches]))
