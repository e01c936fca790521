"""The register step: a Prefect task after the DAG (a git/GTO operation, not a DVC stage)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from flows.dvc import dvc_lock, run_dvc
from flows.report import publish
from prefine import registry
from prefine.params import RegistryParams


def _ensure_remote(repo: Path, settings: RegistryParams) -> None:
    """Add the remote (to .dvc/config.local, leaving the shared config alone) if it's missing."""
    names: list[str] = []
    run_dvc(repo, ["remote", "list"], names.append)
    if not any(line.split()[:1] == [settings.remote] for line in names):
        url = (repo / settings.remote_url).resolve()
        url.mkdir(parents=True, exist_ok=True)
        run_dvc(repo, ["remote", "add", "--local", settings.remote, str(url)], names.append)


@task(name="register", cache_policy=None, persist_result=False)
def register(repo: Path, settings: RegistryParams) -> registry.Decision:
    """Commit, version and gate the model; push its files so the version can be fetched again."""
    logger = get_run_logger()
    with dvc_lock(repo):  # dvc.lock must not change under the commit
        decision = registry.register(repo, settings)
    logger.info("classifier %s (encoder %s): %s - %s", decision.version.version, decision.encoder,
                "promoted to prod" if decision.promoted else "not promoted", decision.reason)
    if settings.push:
        _ensure_remote(repo, settings)
        pushed = run_dvc(repo, ["push", "-r", settings.remote], logger.info)
        if pushed.returncode:
            raise registry.RegistryError(f"dvc push -r {settings.remote} failed:\n{pushed.tail}")
    publish(decision)
    return decision
