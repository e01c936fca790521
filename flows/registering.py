"""The register step: a Prefect task after the DAG (a git/GTO operation, not a DVC stage)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from prefect import get_run_logger, task

from flows import fleet
from flows.dvc import dvc_lock, run_dvc
from flows.report import publish
from prefine import registry
from prefine.params import RegistryParams


@task(name="register", cache_policy=None, persist_result=False)
def register(repo: Path, settings: RegistryParams, to_origin: bool = False) -> registry.Decision:
    """Commit, version and gate the model; push its files so the version can be fetched again.
    `to_origin` (a run in a fresh clone, which pushed its files already): register in the fleet's
    registration turn, on top of the origin's branch, then push the commit and tags there."""
    logger = get_run_logger()
    with fleet.registry_turn() if to_origin else nullcontext():
        branch = fleet.catch_up(repo) if to_origin else None
        with dvc_lock(repo):  # dvc.lock must not change under the commit
            decision = registry.register(repo, settings)
        if branch:
            fleet.publish(repo, branch)
    logger.info("classifier %s (encoder %s): %s - %s", decision.version.version, decision.encoder,
                "promoted to prod" if decision.promoted else "not promoted", decision.reason)
    if settings.push and not to_origin:
        fleet.ensure_remote(repo, settings)
        pushed = run_dvc(repo, ["push", "-r", settings.remote], logger.info)
        if pushed.returncode:
            raise registry.RegistryError(f"dvc push -r {settings.remote} failed:\n{pushed.tail}")
    publish(decision)
    return decision
