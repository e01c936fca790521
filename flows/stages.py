"""A DVC stage as a Prefect task: `dvc repro --single-item <stage>`, output in the task log,
an up-to-date stage shown as a `Skipped` state, a failure raised with the stage's last lines."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from prefect import get_run_logger, task
from prefect.states import Completed, State

from flows.dvc import run_dvc
from flows.gpu import GPU_TAG, hold_device

STAGES = ("ingest", "pretrain", "checkpoint", "finetune", "evaluate")
GPU_STAGES = frozenset({"pretrain", "finetune"})


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and ends with its output."""

    def __init__(self, stage: str, returncode: int, tail: str) -> None:
        super().__init__(f"stage '{stage}' failed (dvc exit {returncode}):\n{tail}")
        self.stage = stage


@task(task_run_name="{stage}", cache_policy=None, persist_result=False)
def reproduce_stage(repo: Path, stage: str, up_to_date: bool = False) -> State:
    """Reproduce one stage through DVC; gpu-tagged runs get the device their slot maps to.
    `up_to_date`: `dvc status` already found it (and all upstream) unchanged, so skip the call."""
    if up_to_date:
        return Completed(name="Skipped", message=f"stage '{stage}' is up to date (dvc status)", data=stage)
    logger = get_run_logger()
    device = hold_device() if stage in GPU_STAGES else nullcontext(None)
    with device as held:
        env = {} if held is None else {"CUDA_VISIBLE_DEVICES": held}
        if held is not None:
            logger.info("device: CUDA_VISIBLE_DEVICES=%r", held)
        result = run_dvc(repo, ["repro", "--single-item", stage], logger.info, env)
    if result.returncode:
        raise StageFailed(stage, result.returncode, result.tail)
    if result.skipped:
        return Completed(name="Skipped", message=f"stage '{stage}' is up to date", data=stage)
    return Completed(message=f"stage '{stage}' reproduced", data=stage)


def stage_task(stage: str, retries: int = 0, delay: float = 0.0, jitter: float | None = None):
    """The task for `stage`, tagged `gpu` when it trains, with its retry policy."""
    tags = [GPU_TAG] if stage in GPU_STAGES else []
    return reproduce_stage.with_options(
        name=f"dvc-{stage}", tags=tags, retries=retries, retry_delay_seconds=delay, retry_jitter_factor=jitter
    )
