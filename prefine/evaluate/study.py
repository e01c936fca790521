"""The label-budget study's library side: its cells, the rows a cell's metrics give, and the
report: every run as CSV, mean ± std over seeds per method and budget as a markdown table and as
a plot of test accuracy against labels per class.

A cell is one (method, budget, seed): a run of the pipeline (dvc.yaml) with the overrides that
say so, kept as a DVC experiment named by what makes it. flows/study.py runs the cells; nothing
here imports Prefect, so a notebook can redraw the report from the CSV:
`write_report(pd.read_csv(csv), out, classes)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from prefine import fingerprint
from prefine.atomic import atomic_path
from prefine.evaluate.names import BASELINES, PROBE, SCRATCH
from prefine.params import Params

ALL = "all"  # the budget "every labeled training image"
COLUMNS = ["method", "labels_per_class", "seed", "labeled", "accuracy", "macro_f1"]
PROBE_ROW = " probe"  # a method's encoder's linear probe (evaluate.json's PROBE) is row "<method> probe"
REPORT = "label_budget"  # <out>/label_budget.{csv,md,png}
METRIC_TITLES = {"accuracy": "Test accuracy", "macro_f1": "Test macro-F1"}


@dataclass(frozen=True)
class Cell:
    """One run of the pipeline in the study: `overrides` (after the study's profile and its
    non-study overrides, `base`) make it; `name`, the DVC experiment it is kept as, says what
    made it, so a rerun of the study, or another study sharing the cell, finds it."""

    method: str
    budget: int | str
    seed: int
    overrides: tuple[str, ...]
    name: str


def plan(params: Params, profile: str | None, base: list[str]) -> list[Cell]:
    """The cells of params.study, seed by seed, budget by budget, method by method. `base` is
    what every cell trains with beyond params.yaml: the study's own overrides, less `study.*`."""
    study = params.study
    shared = [*(f"pretrain.{k}={json.dumps(v)}" for k, v in study.pretrain.items()),
              *(f"finetune.{k}={json.dumps(v)}" for k, v in study.finetune.items())]
    cells = []
    for seed in study.seeds:
        for budget in study.budgets:
            for method in study.methods:
                overrides = (*base, f"seed={seed}", f"pretrain.method={method}",
                             f"finetune.labels_per_class={budget}", *shared)
                key = fingerprint.of(profile, overrides)[:10]
                cells.append(Cell(method, budget, seed, overrides, f"study-{method}-{budget}-seed{seed}-{key}"))
    return cells


def cell_rows(cell: Cell, metrics: dict, ingest: dict, with_shared: bool) -> list[dict]:
    """The table's rows from a cell's metrics/evaluate.json and metrics/ingest.json: its method's
    fine-tuned network and its encoder's linear probe (`<method> probe`; cells evaluated before
    the probe was scored have none), and with `with_shared` its scratch twin's and the trivial
    baselines' (the same for every method of a budget and seed: one cell of them gives those)."""
    keys = {cell.method: "pretrained", cell.method + PROBE_ROW: PROBE,
            **({name: name for name in (SCRATCH, *BASELINES)} if with_shared else {})}
    return [{"method": name, "labels_per_class": cell.budget, "seed": cell.seed, "labeled": ingest["labeled"],
             "accuracy": metrics[key]["accuracy"], "macro_f1": metrics[key]["macro_f1"]}
            for name, key in keys.items() if key in metrics]


def _kind(method: str) -> int:
    """Pretraining methods first, then scratch, then the trivial baselines."""
    return 2 if method in BASELINES else int(method == SCRATCH)


def _budget_order(budget: int | str) -> float:
    return float("inf") if budget == ALL else int(budget)


def results_table(rows: list[dict]) -> pd.DataFrame:
    """One row per run (COLUMNS, then any other keys the rows have), sorted: methods by name, then
    scratch, then the baselines; budgets ascending with "all" last, then seeds; the same runs give
    the same CSV whatever order they finished in."""
    extra = [key for key in dict.fromkeys(k for row in rows for k in row) if key not in COLUMNS]
    table = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    keys = pd.DataFrame({
        "kind": table["method"].map(_kind),
        "method": table["method"],
        "budget": table["labels_per_class"].map(_budget_order),
        "seed": table["seed"],
    })
    return table.loc[keys.sort_values(list(keys.columns), kind="stable").index].reset_index(drop=True)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, budget), in the table's order: mean and sample std over seeds of each metric
    (std is NaN for a single seed), the number of seeds, and the mean labeled set size."""
    metrics = {f"{m}_{stat}": (m, stat) for m in METRIC_TITLES for stat in ("mean", "std")}
    return (
        table.groupby(["method", "labels_per_class"], sort=False)
        .agg(**metrics, seeds=("seed", "count"), labeled=("labeled", "mean"))
        .reset_index()
    )


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def markdown(summary: pd.DataFrame, metric: str = "accuracy") -> str:
    """A markdown table of `metric`: a row per method, a column per budget, cells mean ± std."""
    budgets = list(dict.fromkeys(summary["labels_per_class"]))
    lines = [
        "| method | " + " | ".join(map(str, budgets)) + " |",
        "|---|" + "---:|" * len(budgets),
    ]
    for method, rows in summary.groupby("method", sort=False):
        cells = {b: _cell(m, s) for b, m, s in rows[["labels_per_class", f"{metric}_mean", f"{metric}_std"]].values}
        lines.append(f"| {method} | " + " | ".join(cells.get(b, "-") for b in budgets) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(summary: pd.DataFrame) -> str:
    """The whole report: one table per metric, under a line saying what the cells are."""
    seeds = int(summary["seeds"].max())
    parts = ["# Label-budget study\n", f"Columns: labels per class. Cells: mean ± std over {seeds} seed(s).\n"]
    for metric, title in METRIC_TITLES.items():
        parts += [f"## {title}\n", markdown(summary, metric)]
    return "\n".join(parts)


def plot(summary: pd.DataFrame, path: Path, classes: int) -> None:
    """Test accuracy against labels per class (log x), a line per method with std error bars,
    its linear probe dash-dotted, scratch dashed, the trivial baselines dotted grey; "all" sits at
    its real mean count per class and is labelled "all"."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # Agg: no display, and no pyplot state shared between threads
    ax = figure.add_subplot()
    for method, rows in summary.groupby("method", sort=False):
        if method == SCRATCH:
            style = {"color": "black", "linestyle": "--"}
        elif method in BASELINES:
            style = {"color": "grey", "linestyle": ":", "alpha": 0.8}
        else:
            style = {"linestyle": "-."} if method.endswith(PROBE_ROW) else {}
        ax.errorbar(
            rows["labeled"] / classes, rows["accuracy_mean"], yerr=rows["accuracy_std"].fillna(0.0),
            marker="o", capsize=3, label=method, **style,
        )
    ticks = summary.drop_duplicates("labels_per_class")
    ax.set_xscale("log")
    ax.set_xticks(ticks["labeled"] / classes, labels=[str(b) for b in ticks["labels_per_class"]])
    ax.xaxis.set_minor_locator(NullLocator())
    seeds = int(summary["seeds"].max())
    ax.set(xlabel="labels per class (log scale)", ylabel="test accuracy",
           title=f"Label-budget study: mean ± std over {seeds} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path, format="png", dpi=150)


def write_report(table: pd.DataFrame, out: Path, classes: int) -> dict[str, Path]:
    """<out>/label_budget.csv (every run), .md (tables) and .png (plot), each written atomically."""
    paths = {kind: Path(out) / f"{REPORT}.{kind}" for kind in ("csv", "md", "png")}
    summary = summarize(table)
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(report_markdown(summary))
    with atomic_path(paths["png"]) as tmp:
        plot(summary, tmp, classes)
    return paths
