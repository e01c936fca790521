"""What Prefect shows of a run's outcome: artifacts on its page (the metrics table against scratch
and against the prod it was gated against, the promotion decision with its reason, the run's
pictures and per-class gains), tags and a state message in the runs list, and an event for a
rollback made outside any flow."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_client
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)
from prefect.states import Completed, State

from prefine.evaluate.gallery import CAPTIONS, class_gains
from prefine.paths import EVALUATE_DETAIL_FILE
from prefine.registry import CLASSIFIER_ARTIFACT, Assignment, Decision

HEADLINE_METRICS = ("accuracy", "macro_f1")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.4f}"


def publish(decision: Decision) -> None:
    metrics = decision.version.metrics
    prod = decision.previous_prod
    rows = []
    for name in HEADLINE_METRICS:
        new = (metrics.get("pretrained") or {}).get(name)
        scratch = (metrics.get("scratch") or {}).get(name)
        old = prod.score(name) if prod else None
        rows.append({
            "metric": name,
            decision.version.version: _fmt(new),
            "scratch": _fmt(scratch),
            "gain over scratch": _delta(new, scratch),
            f"prod {prod.version if prod else '(none)'}": _fmt(old),
            "gain over prod": _delta(new, old),
        })
    create_table_artifact(rows, key="prefine-metrics", description="Test metrics: new version vs scratch and vs prod")
    verdict = "promoted to **prod**" if decision.promoted else "**not promoted**"
    create_markdown_artifact(
        f"## classifier {decision.version.version}: {verdict}\n\n"
        f"- reason: {decision.reason}\n"
        f"- new version: {'yes' if decision.new else 'no (model unchanged)'}\n"
        f"- encoder: {decision.encoder}\n"
        f"- commit: `{decision.version.commit[:10]}`\n",
        key="prefine-promotion",
        description="Promotion gate decision",
    )


def publish_visuals(root: Path) -> None:
    """The visualize stage's pictures on the run's page, as a table of file:// links (images
    inline would bloat the API's database), and the per-class gains as a table artifact."""
    rows = [f"| [{path.name}]({(root / path).as_uri()}) | {caption} |"
            for path, caption in CAPTIONS.items() if (root / path).is_file()]
    if rows:
        create_markdown_artifact(
            "## Plots of this run\n\n| plot | shows |\n|---|---|\n" + "\n".join(rows) +
            "\n\nWith the loss curves and confusion matrices: `prefine plots`; on one page: `prefine report`.\n",
            key="prefine-plots", description="The visualize stage's pictures")
    detail = root / EVALUATE_DETAIL_FILE
    if detail.is_file():
        create_table_artifact(class_gains(json.loads(detail.read_text())), key="prefine-class-gains",
                              description="Test accuracy per class: pretrained vs scratch")


def outcome_tags(summary: dict) -> list[str]:
    """A training run's outcome as tags, so the runs list can be filtered by profile, version and
    verdict: `profile:<name>` (or `profile:custom`), `version:vX`, promoted/not-promoted/not-registered."""
    tags = [f"profile:{name}" for name in summary["profiles"]] or ["profile:custom"]
    if not summary["registered"]:
        return [*tags, "not-registered"]
    return [*tags, f"version:{summary['version']}", "promoted" if summary["promoted"] else "not-promoted"]


def outcome_message(summary: dict) -> str:
    """A training run's state message: what became of the model, and why."""
    if not summary["registered"]:
        return f"not registered: {summary['reason']}"
    verdict = "promoted to prod" if summary["promoted"] else "not promoted"
    return f"{CLASSIFIER_ARTIFACT} {summary['version']} {verdict}: {summary['reason']}"


def finish(summary: dict, tags: list[str], message: str) -> State:
    """Add `tags` to the current flow run and complete it with `message` and `summary` as its
    result: the flow's return value, so the outcome shows in the runs list, not only in logs."""
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id)
        client.update_flow_run(current.id, tags=[*current.tags, *(t for t in tags if t not in current.tags)])
    return Completed(message=message, data=summary)


def record_rollback(repo: Path, previous: str, now: Assignment) -> str | None:
    """Emit `prefine.registry.rollback` when a Prefect API is configured, so a rollback made from
    the CLI shows in Prefect's event feed beside the runs. Returns why it could not (None when it
    did or no API is configured) instead of raising: the rollback is done in git either way. One
    quick health check first, so an unreachable API costs a second, not the events worker's retries."""
    url = PREFECT_API_URL.value()
    if not url:
        return None
    quick = {PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: 5.0}
    with temporary_settings(quick), get_client(sync_client=True) as client:
        down = client.api_healthcheck()
    if down:
        return f"Prefect API {url} unreachable ({down}): the rollback is not in its event feed"
    emit_event(
        event="prefine.registry.rollback",
        resource={"prefect.resource.id": f"prefine.{CLASSIFIER_ARTIFACT}"},
        payload={"repo": str(repo), "from": previous, "to": now.version.version, "message": now.message},
    )
    return None
