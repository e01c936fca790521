"""Deployments. One machine: the retrain schedule served by this process (`flow.serve`), which
also runs deployment runs triggered by hand (`prefect deployment run`). A fleet: the training,
retrain and study flows deployed on a work pool, each run in a fresh clone of the git origin on
whichever worker takes it (`prefine deploy`; docs/fleet.md)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_client
from prefect.client.schemas.actions import WorkPoolCreate
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
    ("flows/study.py:label_budget_study", "prefine-study", {}),
)


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
    source = GitRepository(url=origin, branch=branch)
    names = []
    for entrypoint, name, parameters in FLEET:
        try:
            loaded = flow.from_source(source=source, entrypoint=entrypoint)
        except RuntimeError as exc:  # git's own message, on lines of its own
            raise DeployFailed(f"cannot clone {origin}: {' '.join(str(exc).split())}") from None
        loaded.deploy(name, work_pool_name=pool, cron=cron if name == DEPLOYMENT else None, parameters=parameters,
                      build=False, push=False, print_next_steps=False, ignore_warnings=True)
        names.append(f"{loaded.name}/{name}")
    return names
