"""Run DVC commands as subprocesses, one at a time per repo, streaming their output.

Plain Python (no Prefect) so the CLI's `prefine run` and the flows share the same lock: a
second run waits for the first instead of failing on DVC's own repo lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock

from prefine.paths import INPUTS_FILE, PARAMS_FILE

SKIPPED = "didn't change, skipping"


@dataclass(frozen=True)
class DvcResult:
    """What a DVC command did: its exit code and the last lines it printed (for error reports)."""

    returncode: int
    tail: str
    skipped: bool  # every stage it considered was up to date


def dvc_tmp(repo: Path) -> Path:
    """The repo's .dvc/tmp (git ignores it), made if missing: where a run's locks and snapshot live."""
    path = Path(repo) / ".dvc" / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def dvc_lock(repo: Path) -> Iterator[None]:
    """Hold the repo's DVC lock file (waiting for it), so concurrent runs queue up."""
    with FileLock(str(dvc_tmp(repo) / "prefine-dvc.lock")):
        yield


@contextmanager
def run_lock(repo: Path) -> Iterator[None]:
    """Hold the checkout for a whole run (params, stages, register): runs with different
    overrides in one checkout queue up instead of training on each other's params.yaml."""
    with FileLock(str(dvc_tmp(repo) / "prefine-run.lock")):
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


def refresh_inputs(repo: Path) -> bool:
    """Bring inputs.json up to date before DVC compares it: DVC alone misses images in symlinked
    folders and those a manifest names (prefine/data/inputs.py). Returns whether they changed."""
    from prefine.data.inputs import refresh
    from prefine.params import load

    return refresh(load(Path(repo) / PARAMS_FILE).ingest, Path(repo) / INPUTS_FILE, Path(repo))


def stages_of(repo: Path) -> list[str]:
    """The pipeline's stages in dvc.yaml's order: dvc.yaml is the only definition of the DAG."""
    return list((yaml.safe_load((Path(repo) / "dvc.yaml").read_text()) or {}).get("stages") or {})


def status(repo: Path, *targets: str) -> dict[str, list]:
    """`dvc status --json`: what is out of date, per stage ({} when everything is up to date)."""
    lines: list[str] = []
    result = run_dvc(repo, ["status", "--json", *targets], lines.append)
    if result.returncode:
        raise RuntimeError(f"dvc status failed:\n{result.tail}")
    return json.loads("\n".join(lines) or "{}")


@dataclass(frozen=True)
class Snapshot:
    """What a run may change outside DVC's cache, as it was before the run: params.yaml, dvc.lock
    and the `cache: false` outputs (metrics, plots), kept in a temp folder to put back if the run fails.
    The folder lies in the repo's .dvc/tmp (git ignores it): a run killed before it could restore or
    discard leaves its copies with the repo they came from, not in the machine's /tmp."""

    repo: Path
    saved: Path

    @classmethod
    def take(cls, repo: Path) -> Snapshot:
        saved = Path(tempfile.mkdtemp(prefix="prefine-snapshot-", dir=dvc_tmp(repo)))
        for name in ("params.yaml", "dvc.lock", *_uncached_outputs(repo)):
            source = repo / name
            if source.is_dir():
                shutil.copytree(source, saved / name)
            elif source.is_file():
                (saved / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, saved / name)
        return cls(repo, saved)

    def restore(self) -> None:
        """Put the saved files back, then `dvc checkout` the cached outputs: DVC deletes a stage's
        outputs before rerunning it, and the old ones are still in its cache."""
        for name in ("params.yaml", "dvc.lock", *_uncached_outputs(self.repo)):
            target, copy = self.repo / name, self.saved / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if copy.is_dir():
                shutil.copytree(copy, target)
            elif copy.is_file():
                shutil.copy2(copy, target)
        run_dvc(self.repo, ["checkout", "--force", "--quiet"], lambda line: None)
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.saved, ignore_errors=True)


def _uncached_outputs(repo: Path) -> list[str]:
    """Outputs dvc.yaml declares with `cache: false`: DVC can't restore them, so a snapshot keeps them."""
    stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {})
    found = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, dict):
                    (name, options), = entry.items()
                    if (options or {}).get("cache") is False:
                        found.append(name)
    return found
