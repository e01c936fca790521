"""The `training` flow: ingest -> pretrain -> checkpoint -> finetune -> evaluate through DVC,
one Prefect task per stage, then the register step.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

from pathlib import Path

from prefect import flow, get_run_logger

from flows import overrides as params_overrides
from flows.dvc import status
from flows.gpu import ensure_gpu_limit
from flows.registering import register as register_task
from flows.stages import GPU_STAGES, STAGES, stage_task
from prefine.params import RegistryParams, load


@flow(name="training")
def training(
    repo: str = ".",
    profile: str | None = None,
    overrides: list[str] | None = None,
    register_model: bool = True,
    registry: RegistryParams | None = None,
    retries: int = 2,
    retry_delay: float = 5.0,
    retry_jitter: float | None = 0.5,
) -> dict:
    """Run the pipeline stage by stage; `overrides` are `key.path=value` like `dvc exp run -S`,
    `registry` replaces params.yaml's `registry:` section. Training stages retry and resume."""
    root = Path(repo).resolve()
    logger = get_run_logger()
    if params_overrides.apply(root, profile, overrides):
        logger.info("params.yaml updated: profile=%s overrides=%s", profile, overrides)
    ensure_gpu_limit()
    stale = status(root)  # one DVC call; valid until some stage reruns, then DVC decides each
    summary: dict = {"stages": {}}
    for stage in STAGES:
        clean = stage not in stale and all(s == "Skipped" for s in summary["stages"].values())
        tries = retries if stage in GPU_STAGES else 0
        state = stage_task(stage, tries, retry_delay, retry_jitter)(root, stage, clean, return_state=True)
        state.result()  # re-raises the stage's failure, which fails the flow with its message
        summary["stages"][stage] = state.name
    if register_model:
        settings = registry or load(root / "params.yaml").registry
        decision = register_task(root, settings)
        summary.update(version=decision.version.version, promoted=decision.promoted, reason=decision.reason)
    return summary
