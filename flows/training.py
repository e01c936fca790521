"""The `training` flow: ingest -> pretrain -> checkpoint -> finetune -> evaluate through DVC,
one Prefect task per stage, then the register step (skipped for a smoke run unless asked for).
The run ends tagged and with a state message that say what became of the model.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

import time
from contextlib import nullcontext
from pathlib import Path

import yaml
from prefect import flow, get_run_logger
from prefect.states import State

from flows import experiments, fleet
from flows import overrides as params_overrides
from flows.dvc import Snapshot, refresh_inputs, run_lock, stages_of, status
from flows.gpu import gpu_slot
from flows.registering import register as register_task
from flows.report import finish, outcome_message, outcome_tags, publish_visuals
from flows.stages import GPU_STAGES, stage_task
from prefine.params import (
    Params,
    RegistryParams,
    load,
    load_profiles,
    matching_profiles,
)
from prefine.paths import PARAMS_FILE, PROFILES_FILE
from prefine.registry import smoke_run


def skip_reason(register_model: bool | None, params: Params) -> str | None:
    """Why this run is not registered (None: register it). None asks for the default: register
    unless it is a smoke run, whose toy model must not reach prod by accident."""
    if register_model is not None:
        return None if register_model else "register_model=False (--no-register)"
    smoke = smoke_run(params)
    return f"{smoke}; register_model=True (--register) registers it anyway" if smoke else None


def profiles(root: Path) -> list[str]:
    """The profiles params.yaml matches as trained (after the run's profile and overrides)."""
    return matching_profiles(yaml.safe_load((root / PARAMS_FILE).read_text()), load_profiles(root / PROFILES_FILE))


def conclude(root: Path, summary: dict, register_model: bool | None, registry: RegistryParams | None,
             sync: bool, experiment: str | None = None) -> State:
    """Keep the run as DVC experiment `experiment`, or register the trained model unless
    `skip_reason` says not to (`sync`: to the git origin too), then tag the flow run and complete
    it with the outcome as its message and `summary` as its result."""
    params = load(root / PARAMS_FILE)
    summary["profiles"] = profiles(root)
    skipped = skip_reason(register_model, params)
    if experiment:
        summary.update(registered=False, reason=f"kept as experiment {experiment}",
                       experiment=experiments.save(root, experiment, get_run_logger().info))
    elif skipped:
        get_run_logger().info("not registered: %s", skipped)
        summary.update(registered=False, reason=skipped)
    else:
        decision = register_task(root, registry or params.registry, to_origin=sync)
        summary.update(registered=True, version=decision.version.version, promoted=decision.promoted,
                       reason=decision.reason)
    return finish(summary, outcome_tags(summary), outcome_message(summary))


@flow(name="training")
def training(
    repo: str = ".",
    profile: str | None = None,
    overrides: list[str] | None = None,
    register_model: bool | None = None,
    registry: RegistryParams | None = None,
    retries: int = 2,
    retry_delay: float = 5.0,
    retry_jitter: float | None = 0.5,
    sync: bool = False,
    experiment: str | None = None,
    revision: str | None = None,
) -> State:
    """Run the pipeline stage by stage; `overrides` are `key.path=value` like `dvc exp run -S`,
    `registry` replaces params.yaml's `registry:` section. Training stages retry and resume.
    `register_model`: None registers unless smoke run, True always, False never. `sync` (a run in
    a fresh clone on a worker): pull from and push to the DVC remote `registry.remote`, run-cache
    included, and register to the git origin (flows/fleet.py). Calling the flow returns the
    summary dict (the state's data). `experiment`: keep the run as that DVC experiment of
    `revision` (checked out first; default HEAD) and push its ref to the git origin instead of
    registering (a study's cell, flows/study.py)."""
    root = Path(repo).resolve()
    if experiment:
        experiments.check_name(experiment)
    if revision:
        experiments.checkout(root, revision)
    with run_lock(root):  # a second run in this checkout waits, then trains what it asked for
        before = Snapshot.take(root)
        try:
            summary = reproduce(root, profile, overrides, retries, retry_delay, retry_jitter, sync, registry)
        except BaseException:
            before.restore()  # a failed run leaves params.yaml, dvc.lock and the outputs as they were
            raise
        before.discard()
        return conclude(root, summary, register_model, registry, sync, experiment)


def reproduce(
    root: Path, profile: str | None, overrides: list[str] | None, retries: int, delay: float, jitter: float | None,
    sync: bool = False, registry: RegistryParams | None = None,
) -> dict:
    """Apply the run's params, then run each stage of dvc.yaml as a task; return their states and
    wall times (the closing summary shows them). The visualize stage's pictures go on the run's page.
    `sync`: first pull what the fleet made, and push what this run made at the end."""
    logger = get_run_logger()
    if params_overrides.apply(root, profile, overrides):
        logger.info("params.yaml updated: profile=%s overrides=%s", profile, overrides)
    current = load(root / PARAMS_FILE)
    remote = fleet.share(root, registry or current.registry, logger.info) if sync else None
    if refresh_inputs(root):
        logger.info("inputs.json: the source files changed since the last run")
    stale = status(root)  # one DVC call; valid until some stage reruns, then DVC decides each
    summary: dict = {"stages": {}, "seconds": {}}
    for stage in stages_of(root):
        start = time.perf_counter()
        clean = stage not in stale and all(s == "Skipped" for s in summary["stages"].values())
        tries = retries if stage in GPU_STAGES else 0
        with gpu_slot(current.resources) if stage in GPU_STAGES and not clean else nullcontext(None) as device:
            task = stage_task(stage, tries, delay, jitter, device)
            state = task(root, stage, clean, device, sync, return_state=True)
        state.result()  # re-raises the stage's failure, which fails the flow with its message
        summary["stages"][stage] = state.name
        summary["seconds"][stage] = round(time.perf_counter() - start, 1)
    if remote:
        fleet.push(root, remote, logger.info)
    publish_visuals(root)
    return summary
