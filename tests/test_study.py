"""The label-budget study: its report helpers on made-up runs, its labeled subsets on real
Fashion-MNIST, its params, and the flow end to end on a real Prefect server and a tiny slice."""

from __future__ import annotations

import shutil
from pathlib import Path

import faults
import pandas as pd
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.study import WORK, label_budget_study
from prefine.data.ingest import read_pools
from prefine.data.store import NO_LABEL
from prefine.errors import PrefineError
from prefine.evaluate.baselines import BASELINES
from prefine.evaluate.study import (
    SCRATCH,
    markdown,
    results_table,
    run_params,
    summarize,
    write_report,
)
from prefine.params import IngestParams, ParamsError, parse

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

    params = parse({"pretrain": {"epochs": 9, "width": 16},
                    "study": {"pretrain": {"epochs": 1}, "finetune": {"steps": 7}}})
    run = run_params(params, seed=2, method="autoencoder")
    assert (run.seed, run.pretrain.method, run.pretrain.epochs, run.pretrain.width) == (2, "autoencoder", 1, 16)
    assert run.finetune.steps == 7 and params.pretrain.epochs == 9  # the main run's params are untouched


@pytest.mark.e2e
def test_flow_end_to_end_then_a_rerun_reuses_everything(
    prefect_server: str, fmnist_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every (method | scratch, budget, seed) row, with one pretraining crashing once on the way
    (retried, and resumed from its saved state); then a rerun trains nothing."""
    marker = tmp_path / "crashed"
    faults.crash_once(monkeypatch, marker)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "profiles.yaml", tmp_path / "profiles.yaml")
    before = (tmp_path / "params.yaml").read_text()
    overrides = [
        f"ingest.path={fmnist_slice}", "ingest.limit=600",
        "study.methods=[autoencoder, simclr]", "study.budgets=[1, 5]", "study.seeds=[0, 1]",
        "study.pretrain={epochs: 1, width: 8, batch_size: 128}", "study.finetune={steps: 5, batch_size: 16}",
    ]
    summary = label_budget_study(repo=str(tmp_path), overrides=overrides)
    assert marker.exists()  # a pretraining crashed, and the study still finished
    assert (tmp_path / "params.yaml").read_text() == before  # overrides are the run's, not the file's

    csv = pd.read_csv(summary["csv"])
    methods = ("autoencoder", "simclr", SCRATCH, *BASELINES)
    expected = {(m, str(b), s) for m in methods for b in (1, 5) for s in (0, 1)}
    assert set(zip(csv["method"], csv["labels_per_class"].astype(str), csv["seed"], strict=True)) == expected
    assert len(csv) == 28 and csv["accuracy"].between(0, 1).all()
    assert (csv["labeled"] == csv["labels_per_class"] * 10).all()  # baselines use the networks' subsets
    assert list(dict.fromkeys(csv["method"]))[-5:] == [SCRATCH, *sorted(BASELINES)]
    md = Path(summary["md"]).read_text().splitlines()
    table_rows = [line for line in md if line.startswith("| ") and "±" in line]
    assert len(table_rows) == 14 and all(line.count("±") == 2 for line in table_rows)  # 7 rows x 2 metrics
    folder = Path(summary["csv"]).parent
    assert folder.parent == tmp_path / "reports" and folder.name.startswith("study-")  # its own folder
    made_by = yaml.safe_load((folder / "settings.yaml").read_text())
    assert made_by["study"]["seeds"] == [0, 1] and made_by["finetune"]["steps"] == 5
    assert Path(summary["png"]).stat().st_size > 10_000
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["label-budget-study"])))
    assert artifacts and "| method | 1 | 5 |" in artifacts[0].data

    encoders = sorted((tmp_path / "reports" / WORK / "pretrain").glob("*/encoder.safetensors"))
    assert len(encoders) == 4  # 2 methods x 2 seeds, kept for reruns
    stamps = [p.stat().st_mtime_ns for p in encoders]
    again = label_budget_study(repo=str(tmp_path), overrides=overrides)
    assert pd.read_csv(again["csv"]).equals(csv)  # the same rows, read back rather than retrained
    assert [p.stat().st_mtime_ns for p in encoders] == stamps  # no encoder trained again
