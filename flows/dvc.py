"""Run DVC commands as subprocesses, one at a time per repo, streaming their output.

Plain Python (no Prefect) so the CLI's `prefine run` and the flows share the same lock: a
second run waits for the first instead of failing on DVC's own repo lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

SKIPPED = "didn't change, skipping"


@dataclass(frozen=True)
class DvcResult:
    """What a DVC command did: its exit code and the last lines it printed (for error reports)."""

    returncode: int
    tail: str
    skipped: bool  # every stage it considered was up to date


@contextmanager
def dvc_lock(repo: Path) -> Iterator[None]:
    """Hold the repo's DVC lock file (waiting for it), so concurrent runs queue up."""
    path = Path(repo) / ".dvc" / "tmp" / "prefine-dvc.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with this interpreter's bin/ first: stage commands say `python`."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


def run_dvc(
    repo: Path, args: list[str], on_line: Callable[[str], None] = print, env: dict[str, str] | None = None
) -> DvcResult:
    """`dvc <args>` in `repo` under the lock; each output line goes to `on_line` as it comes."""
    tail: deque[str] = deque(maxlen=15)
    ran = False
    with dvc_lock(repo):
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", *args],
            cwd=repo,
            env=venv_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            tail.append(line)
            ran = ran or line.startswith("Running stage")
            on_line(line)
        returncode = process.wait()
    return DvcResult(returncode, "\n".join(tail), skipped=not ran and returncode == 0)


def status(repo: Path, *targets: str) -> dict[str, list]:
    """`dvc status --json`: what is out of date, per stage ({} when everything is up to date)."""
    lines: list[str] = []
    result = run_dvc(repo, ["status", "--json", *targets], lines.append)
    if result.returncode:
        raise RuntimeError(f"dvc status failed:\n{result.tail}")
    return json.loads("\n".join(lines) or "{}")
