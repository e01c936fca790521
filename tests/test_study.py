"""The label-budget study: its report helpers on made-up runs, its labeled subsets on real
Fashion-MNIST, its params, and the flow end to end on a real Prefect server and a tiny slice."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, TaskRunFilter, TaskRunFilterName
from fleet_parts import settled
from prefect_fixtures import TEST_PARAMS
from projects import git, make_project

from flows.study import label_budget_study
from prefine.data.ingest import read_pools
from prefine.data.store import NO_LABEL
from prefine.errors import PrefineError
from prefine.evaluate.names import BASELINES
from prefine.evaluate.study import (
    SCRATCH,
    Cell,
    cell_rows,
    markdown,
    plan,
    results_table,
    summarize,
    write_report,
)
from prefine.params import IngestParams, ParamsError, parse, resolve

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = {  # method -> budget -> accuracy per seed
    "simclr": {1: [0.50, 0.52, 0.54], 5: [0.70, 0.70, 0.70], "all": [0.90, 0.91, 0.92]},
    SCRATCH: {1: [0.40, 0.44, 0.48], 5: [0.60, 0.61, 0.62], "all": [0.89, 0.89, 0.89]},
}


def _rows() -> list[dict]:
    """Made-up runs, in a shuffled order (as they finish); 10 classes, 6000 labeled for "all"."""
    rows = [
        {"method": m, "labels_per_class": b, "seed": s, "labeled": 6000 if b == "all" else 10 * b,
         "accuracy": acc, "macro_f1": acc - 0.01, "wall_s": 1.0}
        for m, budgets in ACCURACY.items() for b, accs in budgets.items() for s, acc in enumerate(accs)
    ]
    return rows[::-1]


def test_table_is_sorted_and_summary_is_mean_and_sample_std() -> None:
    table = results_table(_rows())
    assert list(table["method"]) == ["simclr"] * 9 + [SCRATCH] * 9  # scratch last
    assert list(table["labels_per_class"])[:9] == [1, 1, 1, 5, 5, 5, "all", "all", "all"]
    assert list(table["seed"])[:3] == [0, 1, 2]

    summary = summarize(table).set_index(["method", "labels_per_class"])
    assert summary.loc[("simclr", 1), "accuracy_mean"] == pytest.approx(0.52)
    assert summary.loc[("simclr", 1), "accuracy_std"] == pytest.approx(0.02)  # sample std (ddof=1)
    assert summary.loc[(SCRATCH, 1), "accuracy_std"] == pytest.approx(0.04)
    assert summary.loc[(SCRATCH, "all"), "macro_f1_mean"] == pytest.approx(0.88)
    assert summary.loc[("simclr", "all"), "seeds"] == 3 and summary.loc[("simclr", "all"), "labeled"] == 6000


def test_markdown_has_a_row_per_method_and_a_column_per_budget() -> None:
    text = markdown(summarize(results_table(_rows())))
    lines = text.splitlines()
    assert lines[0] == "| method | 1 | 5 | all |"
    assert lines[2] == "| simclr | 0.520 ± 0.020 | 0.700 ± 0.000 | 0.910 ± 0.010 |"
    assert lines[3] == "| scratch | 0.440 ± 0.040 | 0.610 ± 0.010 | 0.890 ± 0.000 |"
    one_seed = markdown(summarize(results_table([r for r in _rows() if r["seed"] == 0])))
    assert "| simclr | 0.500 | 0.700 | 0.900 |" in one_seed  # no std of a single value


def test_a_cell_gives_its_network_its_probe_and_the_shared_rows_and_an_older_cell_no_probe() -> None:
    cell = Cell("simclr", 10, 0, (), "study-simclr-10-seed0-x")
    scored = {"pretrained": 0.8, "linear_probe": 0.75, SCRATCH: 0.7, **dict.fromkeys(BASELINES, 0.6)}
    metrics = {name: {"accuracy": a, "macro_f1": a - 0.01} for name, a in scored.items()}
    rows = cell_rows(cell, metrics, {"labeled": 100}, with_shared=True)
    assert [(r["method"], r["accuracy"]) for r in rows[:3]] == [("simclr", 0.8), ("simclr probe", 0.75), (SCRATCH, 0.7)]
    assert [r["method"] for r in rows[3:]] == list(BASELINES) and all(r["labeled"] == 100 for r in rows)
    del metrics["linear_probe"]  # evaluated before the probe was scored
    assert [r["method"] for r in cell_rows(cell, metrics, {"labeled": 100}, with_shared=False)] == ["simclr"]
    assert list(results_table(rows)["method"])[:3] == ["simclr", "simclr probe", SCRATCH]


def test_report_files_and_redrawing_from_the_csv(tmp_path: Path) -> None:
    paths = write_report(results_table(_rows()), tmp_path / "reports", classes=10)
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == 18 and list(csv.columns)[:3] == ["method", "labels_per_class", "seed"]
    assert "## Test accuracy" in paths["md"].read_text() and "## Test macro-F1" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "label_budget.csv", "label_budget.md", "label_budget.png"]  # nothing half-written left

    again = write_report(results_table(csv.to_dict("records")), tmp_path / "again", classes=10)
    assert again["md"].read_text() == paths["md"].read_text()  # "all" survives the CSV round trip


def test_labeled_subsets_are_stratified_seeded_and_nested(fmnist_slice: Path) -> None:
    pools = read_pools(IngestParams(path=str(fmnist_slice)))
    five = pools.labeled(5, seed=0)
    assert five.groupby("label").size().tolist() == [5] * 10
    assert five["sha"].tolist() == pools.labeled(5, seed=0)["sha"].tolist()
    assert set(five["sha"]) != set(pools.labeled(5, seed=1)["sha"])
    assert set(pools.labeled(1, seed=0)["sha"]) <= set(five["sha"])  # a bigger budget adds images

    everything = pools.labeled(None, seed=0)
    assert len(everything) == (pools.train["label"] != NO_LABEL).sum() == len(pools.train)
    images = pools.images(five)
    assert images.images.shape == (50, 1, 28, 28) and images.labels.tolist() == five["label"].tolist()
    assert not set(pools.train["sha"]) & set(pools.test["sha"])
    with pytest.raises(PrefineError, match=r"study.budgets = 500 is more than"):
        pools.labeled(500, seed=0, key="study.budgets")


def test_study_params_are_checked_before_any_work() -> None:
    study = parse({}).study
    assert study.budgets == [1, 5, 10, 50, 100, "all"] and study.seeds == [0, 1, 2]
    with pytest.raises(ParamsError, match=r"study.methods.*unknown method 'mae'"):
        parse({"study": {"methods": ["simclr", "mae"]}})
    with pytest.raises(ParamsError, match=r"study.pretrain.*epochz: extra inputs"):
        parse({"study": {"pretrain": {"epochz": 1}}})
    with pytest.raises(ParamsError, match=r"'method' is set by study.methods"):
        parse({"study": {"pretrain": {"method": "simclr"}}})

    params = parse({"study": {"methods": ["simclr", "gan"], "budgets": [10, "all"], "seeds": [0, 1],
                              "pretrain": {"epochs": 1}, "finetune": {"steps": 7, "strategy": "linear"}}})
    cells = plan(params, "quick", ["ingest.limit=600"])
    assert [(c.method, c.budget, c.seed) for c in cells[:4]] == [("simclr", 10, 0), ("gan", 10, 0),
                                                                 ("simclr", "all", 0), ("gan", "all", 0)]
    assert len(cells) == 8 and len({c.name for c in cells}) == 8
    assert cells[0].overrides[:4] == ("ingest.limit=600", "seed=0", "pretrain.method=simclr",
                                      "finetune.labels_per_class=10")
    assert set(cells[0].overrides[4:]) == {"pretrain.epochs=1", "finetune.steps=7", 'finetune.strategy="linear"'}
    assert cells[0].name.startswith("study-simclr-10-seed0-")
    assert plan(params, "quick", ["ingest.limit=600"]) == cells  # names are what makes the cell
    assert plan(params, None, ["ingest.limit=600"])[0].name != cells[0].name  # another profile, another cell
    for cell in cells:  # every cell's overrides make valid params
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        resolve(raw, "quick", list(cell.overrides), ROOT / "profiles.yaml")
        assert parse(raw).finetune.labels_per_class == cell.budget


@pytest.mark.e2e
def test_cells_are_experiments_of_the_pipeline_and_a_rerun_trains_nothing(
    prefect_server: str, fmnist_slice: Path, tmp_path: Path
) -> None:
    """Every cell is a `training` flow run of dvc.yaml in its own clone, kept as a DVC experiment of
    the project's commit; the second budget of a method takes its pretraining from the run-cache;
    the table is the cells' metrics; a rerun finds every cell and trains nothing."""
    project = make_project(tmp_path / "project", fmnist_slice, [*TEST_PARAMS, "pretrain.epochs=1"])
    commit = git(project, "rev-parse", "HEAD").strip()
    overrides = ["study.methods=[simclr]", "study.budgets=[1, 2]", "study.seeds=[0]",
                 "study.finetune={steps: 5}"]
    before_study = datetime.now(timezone.utc)
    summary = label_budget_study(repo=str(project), overrides=overrides)
    assert (summary["cells"], summary["ran"]) == (2, 2)
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""  # the checkout is untouched

    refs = git(project, "for-each-ref", "refs/exps", "--format=%(refname)").split()
    assert len(refs) == 2 and all(ref.startswith(f"refs/exps/{commit[:2]}/{commit[2:]}/study-") for ref in refs)
    for ref in refs:
        params = yaml.safe_load(git(project, "show", f"{ref}:params.yaml"))
        method, budget = ref.split("/")[-1].split("-")[1:3]
        assert (params["pretrain"]["method"], str(params["finetune"]["labels_per_class"])) == (method, budget)
        assert params["seed"] == 0 and params["finetune"]["steps"] == 5

    csv = pd.read_csv(summary["csv"])
    methods = ("simclr", "simclr probe", SCRATCH, *BASELINES)
    assert set(zip(csv["method"], csv["labels_per_class"], csv["seed"], strict=True)) == {
        (m, b, 0) for m in methods for b in (1, 2)}
    assert len(csv) == 14 and csv["accuracy"].between(0, 1).all()
    assert (csv["labeled"] == csv["labels_per_class"] * 10).all()  # baselines use the networks' subsets
    for row in csv[csv["method"] == "simclr"].itertuples():  # the table is what the experiment recorded
        ref = next(r for r in refs if f"/study-simclr-{row.labels_per_class}-" in r)
        assert json.loads(git(project, "show", f"{ref}:metrics/evaluate.json"))["pretrained"]["accuracy"] == row.accuracy
    folder = Path(summary["csv"]).parent
    made_by = yaml.safe_load((folder / "settings.yaml").read_text())
    assert made_by["commit"] == commit and len(made_by["cells"]) == 2
    md = Path(summary["md"]).read_text()
    assert "| method | 1 | 2 |" in md and "| simclr |" in md

    with get_client(sync_client=True) as client:
        pretrain = TaskRunFilter(name=TaskRunFilterName(any_=["pretrain"]))
        mine = settled(lambda: [t for t in client.read_task_runs(task_run_filter=pretrain)
                                if t.start_time and t.start_time >= before_study], 2)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["label-budget-study"])))
    assert sorted(t.state.name for t in mine) == ["Completed", "Skipped"]
    assert artifacts and "| method | 1 | 2 |" in artifacts[0].data

    again = label_budget_study(repo=str(project), overrides=overrides)
    assert again["ran"] == 0 and pd.read_csv(again["csv"]).equals(csv)
