"""`prefine report`: the latest run on one self-contained HTML page, for people who use neither
DVC's nor Prefect's UI: headline metrics and verdict, the registry's decision, per-class
accuracy, every DVC plot (images as base64 PNG, charts drawn by vega inlined in the page) and
the encoder's model card. One file to mail or attach; it loads nothing from anywhere.
Registered on the app in flows/cli.py."""

from __future__ import annotations

import base64
import json
import tempfile
import time
from html import escape
from pathlib import Path
from typing import Annotated

import typer

from flows.plots_cli import PAGE_DIR, STYLE, RepoOption, vega_scripts
from flows.summary import verdict_text
from prefine import paths
from prefine import registry as reg
from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.evaluate.gallery import CAPTIONS, class_gains

REPORT_FILE = PAGE_DIR / "report.html"
TABLE_STYLE = "table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 8px; }"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of text cells, escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _read_json(path: Path) -> dict | None:
    """The file's JSON, None when the run has not written it yet (each section says so)."""
    return json.loads(path.read_text()) if path.is_file() else None


def metrics_section(metrics: dict | None) -> str:
    """Every model evaluate scored (networks, then baselines) and the verdict in words."""
    if metrics is None:
        return f"<p>No {paths.EVALUATE_METRICS_FILE}: run the pipeline.</p>"
    rows = [[name, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}"]
            for name, r in metrics.items() if isinstance(r, dict) and "accuracy" in r]
    return (f"<p>{metrics['test_images']} test images; {metrics['strategy']} fine-tuning on "
            f"{metrics['labels_per_class']} labels per class.</p>"
            + _table(["model", "accuracy", "macro-F1"], rows) + f"<p><b>{escape(verdict_text(metrics))}</b></p>")


def registry_section(repo: Path) -> str:
    """The newest registered classifier version with its registration message (the gate's
    decision), and the version in prod with why it is there."""
    try:
        versions, prod = reg.versions(repo), reg.prod_assignment(repo)
    except PrefineError as exc:
        return f"<p>Registry unavailable: {escape(str(exc))}</p>"
    if not versions:
        return ("<p>No version registered yet (<code>prefine flow</code> registers, "
                "<code>prefine run</code> does not).</p>")
    latest = versions[0]
    rows = [["newest", latest.version, latest.commit[:8], latest.created_at[:19], latest.message]]
    if prod is not None:
        current = prod.version
        rows.append(["prod", current.version, current.commit[:8], current.created_at[:19], prod.message])
    return _table(["", "version", "commit", "created", "decision"], rows)


def gains_section(detail: dict | None) -> str:
    """Test accuracy per class of both classifiers: where pretraining paid, in numbers."""
    if detail is None:
        return f"<p>No {paths.EVALUATE_DETAIL_FILE}.</p>"
    rows = [[r["class"], f"{r['pretrained']:.4f}", f"{r['scratch']:.4f}", f"{r['gain']:+.4f}"]
            for r in class_gains(detail)]
    return _table(["class", "pretrained", "scratch", "gain"], rows)


def dvc_plots(repo: Path) -> dict[str, list[dict]]:
    """`dvc plots show --json`: per plot id, its renderers (vega specs with their data filled
    in, or image files DVC copies to a temp folder, read here as base64 PNG)."""
    from flows.dvc import run_dvc

    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        result = run_dvc(repo, ["plots", "show", "--json", "-o", tmp], lines.append)
        if result.returncode:
            raise PrefineError(f"dvc plots show failed:\n{result.tail}")
        data = json.loads(next(line for line in reversed(lines) if line.startswith("{")))["data"]
        for renderers in data.values():
            for r in renderers:
                if r["type"] == "image":
                    r["src"] = "data:image/png;base64," + base64.b64encode(Path(r["url"]).read_bytes()).decode()
    return data


def figure_html(number: int, plot_id: str, renderer: dict) -> str:
    """One plot as a <figure>: an <img> with its data URI, or a div vega-embed draws into."""
    caption = escape(CAPTIONS.get(Path(plot_id), plot_id))
    if renderer["type"] == "image":
        img = f'<img src="{renderer["src"]}" alt="{escape(plot_id)}">'
        return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"
    spec = json.dumps(renderer["content"]).replace("</", "<\\/")
    return (f'<figure><div id="vega-{number}" class="vega-plot"></div><figcaption>{caption}</figcaption>'
            f"<script>vegaEmbed('#vega-{number}', {spec}, {{actions: false}});</script></figure>")


def plots_section(plots: dict[str, list[dict]]) -> str:
    """Every renderer of every plot, in DVC's order."""
    figures = [(plot_id, r) for plot_id, renderers in plots.items() for r in renderers]
    return "\n".join(figure_html(n, plot_id, r) for n, (plot_id, r) in enumerate(figures)) or "<p>No plots yet.</p>"


def card_section(card: dict | None) -> str:
    """The model card as JSON: lineage (data hashes, params, commit) and the kNN probe."""
    if card is None:
        return f"<p>No {paths.ENCODER_CARD_FILE}.</p>"
    return f"<pre>{escape(json.dumps(card, indent=2))}</pre>"


def page(repo: Path) -> str:
    """The whole report of the run now in `repo`'s workspace."""
    commit = reg.git(repo, "rev-parse", "--short", "HEAD").strip()
    sections = {
        "Headline metrics (test set)": metrics_section(_read_json(repo / paths.EVALUATE_METRICS_FILE)),
        "Registry": registry_section(repo),
        "Per-class accuracy": gains_section(_read_json(repo / paths.EVALUATE_DETAIL_FILE)),
        "Plots": plots_section(dvc_plots(repo)),
        "Encoder model card": card_section(_read_json(repo / paths.ENCODER_CARD_FILE)),
    }
    body = "\n".join(f"<h2>{escape(title)}</h2>\n{html}" for title, html in sections.items())
    return (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>Prefine report {commit}</title>\n'
            f"<style>{STYLE} {TABLE_STYLE}</style>\n{vega_scripts()}\n</head>\n<body>\n<h1>Prefine report</h1>\n"
            f"<p>{escape(str(repo.resolve()))} at commit {commit} (plus workspace changes), "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p>\n{body}\n</body>\n</html>\n")


def report(
    repo: RepoOption = Path("."),
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = REPORT_FILE,
) -> None:
    """One self-contained HTML page of the latest run (metrics, registry decision, plots, model
    card) that opens anywhere without network; prints its path."""
    from flows.cli import _fail, _project, console

    _project(repo)
    target = out if out.is_absolute() else repo / out
    try:
        html = page(repo)
    except PrefineError as exc:
        _fail(str(exc), 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    console.print(str(target.resolve()), highlight=False, soft_wrap=True)
