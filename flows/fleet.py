"""The remote path of a run in a fresh clone, on any worker (the flows' `sync=True`, which the
deployments of `prefine deploy` set). Before the stages, the shared DVC remote gives the run what
any run of the fleet made (`dvc pull --run-cache`); after them, it takes what this run made
(`dvc push --run-cache`); a registered version's commit and tags go to the git origin, one
registration at a time across the fleet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.concurrency.sync import concurrency

from flows.dvc import run_dvc
from flows.gpu import LEASE_S, ensure_limit
from prefine.errors import PrefineError
from prefine.params import RegistryParams
from prefine.registry import git

REGISTRY_LIMIT = "prefine-registry"  # a global concurrency limit of 1: one registration at a time


class SyncFailed(PrefineError):
    """The shared DVC remote or the git origin refused; the message names which, and why."""


def ensure_remote(repo: Path, settings: RegistryParams, default: bool = False) -> None:
    """Add `settings.remote` (to .dvc/config.local, leaving the shared config alone) if missing:
    a URL (s3://...) as it is, a folder relative to the repo. `default`: also make it the remote
    that `dvc repro --pull` reads, in this checkout only."""
    names: list[str] = []
    run_dvc(repo, ["remote", "list"], names.append)
    if not any(line.split()[:1] == [settings.remote] for line in names):
        url = settings.remote_url
        if "://" not in url:
            folder = (repo / url).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            url = str(folder)
        run_dvc(repo, ["remote", "add", "--local", settings.remote, url], names.append)
    if default:
        run_dvc(repo, ["remote", "default", "--local", settings.remote], names.append)


def _dvc(repo: Path, args: list[str], remote: str, on_line: Callable[[str], None]) -> None:
    """`dvc <args>`; a failure raises one line naming the remote and DVC's last word on it."""
    result = run_dvc(repo, args, on_line)
    if result.returncode:
        last = (result.tail.strip().splitlines() or ["no output"])[-1]
        raise SyncFailed(f"dvc {args[0]} with remote '{remote}' failed: {last}")


def share(repo: Path, settings: RegistryParams, on_line: Callable[[str], None]) -> str:
    """Make `settings.remote` this checkout's default remote and pull from it every run-cache
    entry and the outputs dvc.lock names that it holds (a first run finds none), so `dvc status`
    and the run-cache see the fleet's work. Returns the remote's name."""
    ensure_remote(repo, settings, default=True)
    _dvc(repo, ["pull", "--run-cache", "--allow-missing", "-r", settings.remote], settings.remote, on_line)
    return settings.remote


def push(repo: Path, remote: str, on_line: Callable[[str], None]) -> None:
    """Give the fleet what this run made: its outputs and its run-cache entries."""
    _dvc(repo, ["push", "--run-cache", "-r", remote], remote, on_line)


@contextmanager
def registry_turn() -> Iterator[None]:
    """Hold the fleet's one registration slot: a version number and a prod tag are decided from
    the origin's tags, so two runs registering at once would both claim the next version."""
    ensure_limit(REGISTRY_LIMIT, 1)
    with concurrency(REGISTRY_LIMIT, occupy=1, lease_duration=LEASE_S, strict=True):
        yield


def catch_up(repo: Path) -> str:
    """Fetch the origin's branch and tags and put HEAD (and the index) on the branch's tip, the
    work tree keeping this run's files: its commit then lands after every run registered since
    it started, and its version is numbered after theirs. Returns the branch."""
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    if branch == "HEAD":
        raise SyncFailed(f"{repo}: a detached HEAD has no branch to push to; deploy from a branch")
    git(repo, "fetch", "-q", "--tags", "origin", branch)
    git(repo, "reset", "-q", "FETCH_HEAD")
    return branch


def publish(repo: Path, branch: str) -> None:
    """Push this run's commit and the registry's tags to the origin, all or nothing."""
    git(repo, "push", "-q", "--atomic", "--tags", "origin", f"HEAD:refs/heads/{branch}")
