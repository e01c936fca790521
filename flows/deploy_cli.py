"""`prefine deploy`: the training, retrain and study flows as deployments on a work pool, each
run in a fresh clone of the project's git origin on whichever worker takes it. Registered on the
app in flows/cli.py; Prefect is imported inside the command, so `prefine --help` stays quick."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer


def deploy(
    pool: Annotated[str, typer.Option(help="Work pool (created as a `process` pool when missing).")] = "prefine",
    origin: Annotated[Optional[str], typer.Option(
        help="Git URL every run clones and pushes to (default: the `origin` remote of --repo).")] = None,
    branch: Annotated[Optional[str], typer.Option(help="Branch the runs clone and push to (default: the origin's).")] = None,
    cron: Annotated[str, typer.Option(help="The retrain deployment's schedule (cron, server time zone).")] = "0 3 * * *",
    repo: Annotated[Path, typer.Option("--repo", "-r", help="The project whose origin is the default.")] = Path("."),
) -> None:
    """Deploy training, retrain (on --cron) and the study to a work pool; then
    `prefect worker start --pool POOL` on each host runs them (docs/fleet.md)."""
    from flows.cli import _fail, console
    from flows.deploy import deploy as create
    from prefine.errors import PrefineError

    url = origin or _origin(repo)
    if url is None:
        _fail(f"{repo.resolve()}: no git remote 'origin' to clone from; pass --origin URL", 2)
    try:
        names = create(url, pool, branch, cron)
    except PrefineError as exc:
        _fail(str(exc), 2)
    for name in names:
        console.print(f"deployed {name} on pool {pool}, cloning {url}", highlight=False, soft_wrap=True)


def _origin(repo: Path) -> str | None:
    """The URL of `repo`'s `origin` remote, or None."""
    found = subprocess.run(["git", "remote", "get-url", "origin"], cwd=repo, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None
