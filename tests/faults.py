"""Failure injection for the tests, kept out of product code: a pretraining crashes once, right
after it saved epoch 1 (the state a retry must resume from).

In-process: `crash_once(marker)` patches the training loop. In DVC stage subprocesses (Prefect
flow tests): `subprocess_env(marker)` puts tests/fault_site on PYTHONPATH, whose sitecustomize
installs the same patch when the loop module is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

MARKER_ENV = "PREFINE_TEST_CRASH_ONCE"
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


def subprocess_env(marker: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), env.get("PYTHONPATH")]))
    env[MARKER_ENV] = str(marker)
    return env


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the loop module as it is first imported, so processes that never train pay nothing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the finder protocol
        if name != LOOP:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            patch_loop(module, self.marker)

        spec.loader.exec_module = exec_module
        return spec


def install_from_env() -> None:
    if marker := os.environ.get(MARKER_ENV):
        sys.meta_path.insert(0, _PatchOnImport(Path(marker)))
