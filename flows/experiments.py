"""A training run kept as a DVC experiment, so that any checkout of the same commit finds it by
name: `dvc exp save` commits the run's params.yaml, dvc.lock, metrics and plots under
refs/exps/<baseline commit>/<name>, and `dvc exp push` gives that ref to the git origin (the
files the run made went to the DVC remote with the run's push, or lie in the cache its checkout
shares). The label-budget study's cells are such runs (flows/study.py)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from flows.dvc import run_dvc
from prefine.errors import PrefineError
from prefine.registry import git

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # what a git ref component and DVC accept


class ExperimentError(PrefineError):
    """DVC or git refused to keep or find an experiment; the message names which, and why."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name or name.endswith((".lock", ".")):
        raise ExperimentError(f"experiment name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def ref(baseline: str, name: str) -> str:
    """Where DVC keeps experiment `name` of the commit `baseline`."""
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def checkout(repo: Path, revision: str) -> None:
    """Put the checkout on `revision` (detached), fetching it from the origin if a shallow clone
    lacks it: a study's cells run the commit the study runs, whatever the branch did since."""
    if _commit(repo, revision) is None:
        git(repo, "fetch", "-q", "--depth", "1", "origin", revision)
    if _commit(repo, revision) != head(repo):
        git(repo, "checkout", "-q", "--detach", revision)


def _commit(repo: Path, revision: str) -> str | None:
    found = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{revision}^{{commit}}"], cwd=repo,
                           capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def save(repo: Path, name: str, on_line: Callable[[str], None]) -> str:
    """Keep the workspace as experiment `name` of HEAD (replacing one of that name) and push its
    ref to the git origin; returns the ref. Files the run made that git did not track yet (a
    project's first metrics) are staged first: `dvc exp save` keeps only what git tracks."""
    git(repo, "add", "-A")
    for args in (["exp", "save", "--force", "-n", check_name(name)], ["exp", "push", "--no-cache", "origin", name]):
        result = run_dvc(repo, args, on_line)
        if result.returncode:
            last = (result.tail.strip().splitlines() or ["no output"])[-1]
            raise ExperimentError(f"dvc {' '.join(args[:2])} {name}: {last}")
    return ref(head(repo), name)


def fetch(repo: Path) -> None:
    """Every experiment ref of the git origin, so that `read` sees what other hosts kept."""
    git(repo, "fetch", "-q", "origin", "+refs/exps/*:refs/exps/*")


def read(repo: Path, baseline: str, name: str, path: Path) -> dict | None:
    """The JSON file `path` as experiment `name` of `baseline` recorded it; None when there is
    no such experiment."""
    where = ref(baseline, name)
    if _commit(repo, where) is None:
        return None
    shown = subprocess.run(["git", "show", f"{where}:{path.as_posix()}"], cwd=repo, capture_output=True, text=True)
    if shown.returncode:
        raise ExperimentError(f"experiment {name} ({where}) has no {path}: {shown.stderr.strip()}")
    return json.loads(shown.stdout)
