"""A DVC stage as a Prefect task: `dvc repro --single-item <stage>`, output in the task log,
an up-to-date stage shown as a `Skipped` state, a failure raised with the stage's last lines."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.states import Completed, State

from flows.dvc import run_dvc

GPU_STAGES = frozenset({"pretrain", "finetune"})  # each holds a GPU slot of its host (flows/gpu.py)


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names the stage and ends with its output."""

    def __init__(self, stage: str, returncode: int, tail: str) -> None:
        super().__init__(f"stage '{stage}' failed (dvc exit {returncode}):\n{tail}")
        self.stage = stage


@task(task_run_name="{stage}", cache_policy=None, persist_result=False)
def reproduce_stage(repo: Path, stage: str, up_to_date: bool = False, device: str | None = None,
                    pull: bool = False) -> State:
    """Reproduce one stage through DVC on `device` (a GPU id the flow holds for it, "" for the
    CPU, None to leave CUDA_VISIBLE_DEVICES alone). `up_to_date`: `dvc status` already found it
    (and all upstream) unchanged, so skip the call. `pull`: fetch from the default remote the
    outputs of a run-cache hit, which this checkout never made (`dvc repro --pull`)."""
    if up_to_date:
        return Completed(name="Skipped", message=f"stage '{stage}' is up to date (dvc status)", data=stage)
    logger = get_run_logger()
    env = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}
    if device is not None:
        logger.info("device: %s (CUDA_VISIBLE_DEVICES=%r)", device_name(device), device)
    result = run_dvc(repo, ["repro", "--single-item", *(["--pull"] if pull else []), stage], logger.info, env)
    if result.returncode:
        raise StageFailed(stage, result.returncode, result.tail)
    if result.skipped:
        return Completed(name="Skipped", message=f"stage '{stage}' is up to date", data=stage)
    return Completed(message=f"stage '{stage}' reproduced", data=stage)


def device_name(device: str) -> str:
    """Held device ids as torch names them: "cpu" for "", else cuda:<id>[,cuda:<id>...]."""
    return ",".join(f"cuda:{d}" for d in device.split(",")) if device else "cpu"


def stage_task(stage: str, retries: int = 0, delay: float = 0.0, jitter: float | None = None,
               device: str | None = None):
    """The task for `stage` with its retry policy, tagged `device:<cpu | cuda:N>` when it was
    handed a device (a training stage holding its host's GPU slot)."""
    tags = [] if device is None else [f"device:{device_name(device)}"]
    return reproduce_stage.with_options(
        name=f"dvc-{stage}", tags=tags, retries=retries, retry_delay_seconds=delay, retry_jitter_factor=jitter
    )
