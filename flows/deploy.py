"""The retrain schedule: a deployment with a cron schedule, served by this process
(`flow.serve`), which also runs deployment runs triggered by hand (`prefect deployment run`)."""

from __future__ import annotations

from pathlib import Path

from flows.retrain import retrain

DEPLOYMENT = "prefine-retrain"
CRON = "0 3 * * *"  # nightly at 03:00


def serve(repo: str = ".", cron: str | None = CRON, name: str = DEPLOYMENT) -> None:
    """Register the `retrain/<name>` deployment for `repo` and run its runs until interrupted."""
    retrain.serve(name=name, cron=cron, parameters={"repo": str(Path(repo).resolve())})
