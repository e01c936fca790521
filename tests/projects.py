"""Real git + DVC projects built from this tree, for the end-to-end tests and the benchmarks.

Import as `from projects import make_project, dvc, git` (tests/ is on sys.path under pytest;
benchmarks put it there themselves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "profiles.yaml", "prefine", "tasks", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore", ".gitignore")
# stage commands say `python`: the one running us, as in an activated venv
VENV_ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """A plain `dvc` CLI call the way a person runs it (the venv's python on PATH)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=VENV_ENV, capture_output=True, text=True)


def make_project(dest: Path, data: Path, overrides: list[str] = (), profile: str = "quick") -> Path:
    """This tree's pipeline in a fresh, committed git repo at `dest`, reading `data`."""
    from flows.dvc import refresh_inputs
    from prefine.errors import PrefineError
    from flows.overrides import apply

    for name in PROJECT_FILES:
        source, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():  # with __pycache__: its stages then skip compiling (copy2 keeps the mtimes pyc checks)
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    apply(dest, profile, [f"ingest.path={data}", f"registry.remote_url={dest.parent / 'storage'}", *overrides])
    try:
        refresh_inputs(dest)  # what `prefine run` does first; plain `dvc repro` needs the file
    except PrefineError:  # a project made to fail: its ingest stage will say why
        (dest / "inputs.json").write_text("{}\n")
    git(dest, "init", "-q")
    git(dest, "config", "user.email", "ci@example.com")
    git(dest, "config", "user.name", "CI")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "project")
    return dest
