"""The `label-budget-study` flow: which pretraining method pays off at which label budget.

Every cell (method, budget, seed) of study.methods x study.budgets x study.seeds is a run of the
one DAG, dvc.yaml, through the `training` flow, with the overrides that make it (as `dvc exp run
-S` would), kept as a DVC experiment of the study's commit (flows/experiments.py). The evaluate
stage scores the pretrained model, its scratch twin and the trivial baselines on the same
labeled subset, so the report is read from the experiments' metrics; there is no other way to
train.

Where the cells run: with `deployment` (what `prefine deploy`'s study deployment passes), each is
a flow run of that deployment on its work pool (`run_deployment`), in a fresh clone on whichever
worker takes it; else each runs here, one after the other, in a temporary clone of this checkout
that shares its DVC cache. Cells whose experiment exists are not run again; the cells of one
(method, seed) wait for the first of them, whose pretraining they then take from DVC's run-cache.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

import subprocess
import tempfile
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture

from flows import experiments
from flows.dvc import run_dvc
from flows.training import training
from prefine import fingerprint
from prefine.atomic import atomic_path
from prefine.evaluate.study import Cell, cell_rows, plan, results_table, write_report
from prefine.params import ParamsError, load_with
from prefine.paths import EVALUATE_METRICS_FILE, INGEST_METRICS_FILE
from prefine.registry import git

STUDY_KEY = "study."  # overrides of the study's own section: how the study runs, not what a cell trains


class StudyFailed(RuntimeError):
    """Some cells failed; the finished ones are kept as experiments, so a rerun redoes only the rest."""


def _cell_run(cell: Cell, profile: str | None, baseline: str) -> dict:
    """The training flow's parameters for `cell`: never registered, kept as its experiment."""
    return {"profile": profile, "overrides": list(cell.overrides), "register_model": False,
            "experiment": cell.name, "revision": baseline}


def run_here(root: Path, cell: Cell, profile: str | None, baseline: str) -> None:
    """`cell` in a temporary clone of `root` at `baseline` that uses root's DVC cache (and so its
    run-cache); the experiment's ref is pushed back to root."""
    with tempfile.TemporaryDirectory(prefix=f"prefine-{cell.name}-") as tmp:
        clone = Path(tmp) / "repo"
        git(Path(tmp), "clone", "-q", "--no-checkout", str(root), str(clone))
        git(clone, "checkout", "-q", "--detach", baseline)
        for key in ("user.name", "user.email"):  # the experiment's commit is made as root's committer
            if value := subprocess.run(["git", "config", key], cwd=root, capture_output=True, text=True).stdout.strip():
                git(clone, "config", key, value)
        run_dvc(clone, ["cache", "dir", "--local", _cache_dir(root)], lambda _: None)
        run_dvc(clone, ["checkout", "--allow-missing", "--quiet"], lambda _: None)  # what root's cache holds
        training(repo=str(clone), **_cell_run(cell, profile, baseline))


def _cache_dir(root: Path) -> str:
    """Where root's DVC cache is (`dvc cache dir`: .dvc/cache unless configured elsewhere)."""
    lines: list[str] = []
    result = run_dvc(root, ["cache", "dir"], lines.append)
    if result.returncode or not lines:
        raise StudyFailed(f"{root}: `dvc cache dir` failed: {result.tail.strip()}")
    return lines[-1].strip()


@task(task_run_name="cell-{cell.name}", retries=1, cache_policy=None, persist_result=False)
def run_there(deployment: str, cell: Cell, profile: str | None, baseline: str) -> None:
    """`cell` as a flow run of `deployment` on its pool; a run that does not complete fails this
    task, which is retried once (on whichever worker is alive)."""
    run = run_deployment(deployment, parameters=_cell_run(cell, profile, baseline), as_subflow=True)
    if not run.state or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        raise StudyFailed(f"{cell.name}: flow run {run.name} ended {state}: {run.state and run.state.message}")


def _order(cells: list[Cell]) -> list[Cell]:
    """The first cell of each (method, seed) first: the rest take its pretraining from the run-cache."""
    firsts = {(c.method, c.seed): c for c in reversed(cells)}
    return sorted(cells, key=lambda c: firsts[c.method, c.seed] is not c)


def _dirty(root: Path) -> str:
    return git(root, "status", "--porcelain", "--untracked-files=no").strip()


@task(name="write-report", cache_policy=None, persist_result=False)
def report(rows: list[dict], out: Path, classes: int, made_by: dict) -> dict[str, Path]:
    """The CSV, markdown and plot in the study's own folder `out`, with settings.yaml saying what
    made them; the markdown and every row as artifacts of the run (on a worker, the folder is in
    the run's temporary clone)."""
    table = results_table(rows)
    paths = write_report(table, out, classes)
    with atomic_path(out / "settings.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(made_by, sort_keys=False))
    paths["settings"] = out / "settings.yaml"
    create_markdown_artifact(
        paths["md"].read_text(), key="label-budget-study", description="Test metrics per method and label budget"
    )
    create_table_artifact(table.to_dict("records"), key="label-budget-study-runs",
                          description="Every row of the study: a method, budget and seed each")
    return paths


@flow(name="label-budget-study")
def label_budget_study(
    repo: str = ".",
    profile: str | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    deployment: str | None = None,
) -> dict:
    """Run every cell not run before, then report from the cells' experiments. `overrides` are
    `key.path=value`, as `dvc exp run -S`, for this study only. `deployment` (e.g.
    "training/prefine-training"): run the cells on its work pool. The report goes to
    <study.out>/<name> (default: study-<id of its settings>), so no study overwrites another's."""
    root = Path(repo).resolve()
    params = load_with(root, profile, overrides)
    if {**params.finetune.model_dump(), **params.study.finetune}["strategy"] == "auto":
        raise ParamsError("finetune.strategy auto is the pipeline's choice; the study compares fixed strategies: "
                          "set study.finetune.strategy to linear, partial, full, semisup or propagate")
    logger = get_run_logger()
    baseline = experiments.head(root)
    if dirty := _dirty(root):
        logger.warning("the cells run commit %s; these uncommitted changes are not in them:\n%s", baseline[:8], dirty)
    cells = plan(params, profile, [o for o in overrides or [] if not o.startswith(STUDY_KEY)])
    if deployment:
        experiments.fetch(root)
    todo = _order([c for c in cells if experiments.read(root, baseline, c.name, EVALUATE_METRICS_FILE) is None])
    logger.info("%d cells, %d kept from earlier runs of commit %s; to run: %d (%s)", len(cells),
                len(cells) - len(todo), baseline[:8], len(todo), f"on {deployment}" if deployment else "here")
    failed = _run(root, todo, profile, baseline, deployment)
    if failed:
        raise StudyFailed(f"{len(failed)} of {len(todo)} cells failed ({'; '.join(failed)}); the finished ones are "
                          f"kept as experiments of commit {baseline[:8]}: run the study again to redo only the rest")
    if deployment:
        experiments.fetch(root)
    rows, shared, classes = [], set(), 0
    for cell in cells:
        metrics = experiments.read(root, baseline, cell.name, EVALUATE_METRICS_FILE)
        counts = experiments.read(root, baseline, cell.name, INGEST_METRICS_FILE)
        rows.extend(cell_rows(cell, metrics, counts, (cell.budget, cell.seed) not in shared))
        shared.add((cell.budget, cell.seed))
        classes = len(metrics["classes"])
    made_by = {"study": params.study.model_dump(), "commit": baseline, "profile": profile,
               "cells": {c.name: list(c.overrides) for c in cells}}
    folder = root / params.study.out / (name or f"study-{fingerprint.of(made_by)[:8]}")
    paths = report(rows, folder, classes, made_by)
    return {"runs": len(rows), "cells": len(cells), "ran": len(todo),
            **{kind: str(path) for kind, path in paths.items()}}


def _run(root: Path, todo: list[Cell], profile: str | None, baseline: str, deployment: str | None) -> list[str]:
    """Run the cells (the first of each method and seed before the rest); the names of those that failed."""
    logger = get_run_logger()
    failed: list[str] = []
    if deployment is None:
        for done, cell in enumerate(todo, 1):
            try:
                run_here(root, cell, profile, baseline)
            except Exception as exc:  # noqa: BLE001 - reported, kept out of the table
                failed.append(cell.name)
                logger.error("%d/%d %s failed: %s", done, len(todo), cell.name, exc)
                continue
            logger.info("%d/%d %s done", done, len(todo), cell.name)
        return failed
    firsts: dict[tuple, PrefectFuture] = {}
    futures = {}
    for cell in todo:
        first = firsts.get((cell.method, cell.seed))
        future = run_there.submit(deployment, cell, profile, baseline, wait_for=[first] if first else None)
        firsts.setdefault((cell.method, cell.seed), future)
        futures[cell.name] = future
    for cell_name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - reported, kept out of the table
            failed.append(cell_name)
            logger.error("%s failed: %s", cell_name, exc)
    return failed
