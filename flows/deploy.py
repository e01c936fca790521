"""Deployments. One machine: the retrain schedule served by this process (`flow.serve`), which
also runs deployment runs triggered by hand (`prefect deployment run`). A fleet: the training,
retrain and study flows deployed on a work pool, each run in a fresh clone of the git origin on
whichever worker takes it (`prefine deploy`; docs/fleet.md)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import flow, get_client
from prefect.automations import Automation
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.runner.storage import GitRepository
from prefect.settings import PREFECT_API_URL
from prefect.workers.process import ProcessWorker

from flows.retrain import retrain
from prefine.errors import PrefineError

DEPLOYMENT = "prefine-retrain"
CRON = "0 3 * * *"  # nightly at 03:00


def serve(repo: str = ".", cron: str | None = CRON, name: str = DEPLOYMENT) -> None:
    """Register the `retrain/<name>` deployment for `repo` and run its runs until interrupted."""
    retrain.serve(name=name, cron=cron, parameters={"repo": str(Path(repo).resolve())})


POOL = "prefine"
# what `prefine deploy` creates: (entrypoint in the repo, deployment name, parameters)
FLEET = (
    ("flows/training.py:training", "prefine-training", {"sync": True}),
    ("flows/retrain.py:retrain", DEPLOYMENT, {"sync": True}),
    ("flows/study.py:label_budget_study", "prefine-study", {"deployment": "training/prefine-training"}),
)


# A deployment's flow runs send a heartbeat this often; one silent for UNRESPONSIVE_S (its host
# died: kill -9, a lost machine) is marked Crashed by the ZOMBIES automation, so what waits on it
# (a study's cell) sees it end and runs it again elsewhere.
HEARTBEAT_S = 30  # Prefect's minimum
UNRESPONSIVE_S = 90
ZOMBIES = "prefine: crash unresponsive flow runs"


class DeployFailed(PrefineError):
    """No server, pool or origin to deploy to; the message names which."""


def ensure_pool(pool: str) -> str:
    """The type of work pool `pool`, created as a `process` pool (with the process worker's
    default job template) when missing: `prefect worker start --pool <pool>` then runs its runs."""
    with get_client(sync_client=True) as client:
        if unreachable := client.api_healthcheck():
            raise DeployFailed(f"Prefect server at {PREFECT_API_URL.value()} unreachable: {unreachable}")
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            return "process"


def deploy(origin: str, pool: str = POOL, branch: str | None = None, cron: str | None = CRON) -> list[str]:
    """Create or update the training, retrain (on `cron`) and study deployments on `pool`. Each
    run clones `origin` (at `branch`, else its default branch) afresh on whichever worker takes
    it; `sync=True` makes it pull from and push to the shared DVC remote and register to the
    origin (flows/fleet.py). Returns their `flow/deployment` names."""
    if not PREFECT_API_URL.value():
        raise DeployFailed("no Prefect server configured: prefect config set PREFECT_API_URL=http://<server>:4200/api")
    ensure_pool(pool)
    ensure_zombie_automation()
    source = GitRepository(url=origin, branch=branch)
    names = []
    for entrypoint, name, parameters in FLEET:
        try:
            loaded = flow.from_source(source=source, entrypoint=entrypoint)
        except RuntimeError as exc:  # git's own message, on lines of its own
            raise DeployFailed(f"cannot clone {origin}: {' '.join(str(exc).split())}") from None
        loaded.deploy(name, work_pool_name=pool, cron=cron if name == DEPLOYMENT else None, parameters=parameters,
                      job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}},
                      build=False, push=False, print_next_steps=False, ignore_warnings=True)
        names.append(f"{loaded.name}/{name}")
    return names


def ensure_zombie_automation() -> None:
    """Create the ZOMBIES automation unless the server has it (Prefect's recipe for flow runs
    whose process died without a word: docs.prefect.io, "detect zombie flows")."""
    try:
        Automation.read(name=ZOMBIES)
        return
    except ValueError:  # not there yet
        pass
    Automation(
        name=ZOMBIES,
        description="A flow run silent for 90 s (no heartbeat, no final state) is marked Crashed",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=UNRESPONSIVE_S),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {UNRESPONSIVE_S} s: its process or host died")],
    ).create()
