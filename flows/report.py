"""Prefect artifacts of a run, shown on its page in the UI: the metrics table (against scratch
and against the prod it was gated against) and the promotion decision with its reason."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from prefine.registry import Decision

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
