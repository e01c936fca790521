"""The `retrain` flow: the scheduled job. It asks DVC whether the ingest stage's inputs (the
watched data folder, the source, its params) changed, and only then runs `training`, whose
register step applies the promotion gate.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.dvc import status
from flows.training import training
from prefine.params import RegistryParams


@task(name="detect-new-data", cache_policy=None, persist_result=False)
def data_changes(repo: Path) -> list:
    """What changed in the ingest stage's inputs since the last run ([] when nothing did)."""
    return status(repo, "ingest").get("ingest", [])


@flow(name="retrain")
def retrain(
    repo: str = ".",
    registry: RegistryParams | None = None,
    retries: int = 2,
    retry_delay: float = 5.0,
    retry_jitter: float | None = 0.5,
) -> dict:
    """Retrain and register when the data changed; otherwise log that and do nothing."""
    root = Path(repo).resolve()
    logger = get_run_logger()
    changes = data_changes(root)
    if not changes:
        logger.info("data unchanged since the last run: nothing to retrain")
        return {"retrained": False}
    logger.info("data changed: %s; retraining", changes)
    result = training(repo=str(root), registry=registry, retries=retries, retry_delay=retry_delay, retry_jitter=retry_jitter)
    return {"retrained": True, "changes": changes, **result}
