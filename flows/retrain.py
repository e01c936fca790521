"""The `retrain` flow: the scheduled job. It asks DVC whether the ingest stage's inputs (the
watched data folder, the source, its params) changed, and only then runs `training`, whose
register step applies the promotion gate. The run is tagged `no-op` when nothing changed, else
with the training run's outcome tags, and its state message says which.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import State

from flows import fleet
from flows.dvc import refresh_inputs, status
from flows.report import finish, outcome_message, outcome_tags
from flows.training import training
from prefine.params import RegistryParams, load
from prefine.paths import PARAMS_FILE


@task(name="detect-new-data", cache_policy=None, persist_result=False)
def data_changes(repo: Path, shared: RegistryParams | None = None) -> list:
    """What changed in the ingest stage's inputs since the last run ([] when nothing did); the
    source files are listed afresh first (inputs.json), so images in symlinked folders or named
    by a manifest count too. `shared`: a fresh clone pulls the last run's outputs from that
    remote first, else their absence would count as a change."""
    if shared:
        fleet.share(repo, shared, get_run_logger().info)
    refresh_inputs(repo)
    return status(repo, "ingest").get("ingest", [])


@flow(name="retrain")
def retrain(
    repo: str = ".",
    sync: bool = False,
    registry: RegistryParams | None = None,
    retries: int = 2,
    retry_delay: float = 5.0,
    retry_jitter: float | None = 0.5,
) -> State:
    """Retrain and register when the data changed; otherwise log that and do nothing. `sync`: a
    run in a fresh clone, as `training` has it. Calling the flow returns the summary dict (the
    state's data)."""
    root = Path(repo).resolve()
    logger = get_run_logger()
    changes = data_changes(root, (registry or load(root / PARAMS_FILE).registry) if sync else None)
    if not changes:
        message = "data unchanged since the last run: nothing to retrain"
        logger.info(message)
        return finish({"retrained": False}, ["no-op"], message)
    logger.info("data changed: %s; retraining", changes)
    result = training(repo=str(root), registry=registry, retries=retries, retry_delay=retry_delay,
                      retry_jitter=retry_jitter, sync=sync)
    return finish({"retrained": True, "changes": changes, **result}, outcome_tags(result), outcome_message(result))
