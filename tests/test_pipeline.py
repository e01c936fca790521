"""The whole DAG through real `dvc repro` in a temp git repo, on a small Fashion-MNIST slice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import warm
from projects import VENV_ENV, dvc, make_project

from flows.overrides import apply
from prefine import paths

pytestmark = pytest.mark.e2e

STAGES = ["ingest", "pretrain", "checkpoint", "finetune", "evaluate", "visualize"]


def run_dvc(repo: Path, *args: str) -> str:
    result = dvc(repo, *args)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_slice) -> Path:
    # four epochs, so that a kill can land between two of them
    overrides = ["pretrain.epochs=4"]
    path = make_project(tmp_path_factory.mktemp("pipeline") / "project", fmnist_slice, overrides)
    out = run_dvc(path, "repro")
    assert ran(out) == STAGES, out
    return path


def test_repro_makes_every_output_and_metrics_dvc_reads(repo):
    for out in ["data/unlabeled", "data/labeled", "data/test", "models/encoder.safetensors",
                "models/classifier.safetensors", "models/scratch.safetensors", "models/encoder.card.json"]:
        assert (repo / out).exists(), out
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.1 < metrics["pretrained"]["accuracy"] <= 1.0  # better than chance on 10 classes
    detail = json.loads((repo / "metrics/evaluate_detail.json").read_text())
    assert set(detail["per_class"]["pretrained"]) == set(detail["per_class"]["scratch"]) == set(metrics["classes"])
    shown = run_dvc(repo, "metrics", "show", "--json")
    assert "gain_over_scratch" in shown
    card = json.loads((repo / "models/encoder.card.json").read_text())
    assert card["lineage"]["git_commit"] and len(card["lineage"]["data"]["unlabeled"]) == 64
    assert 0.0 <= card["metrics"]["knn_accuracy"] <= 1.0
    loss_curve = repo / "plots/pretrain/plots/metrics/loss.tsv"
    assert len(loss_curve.read_text().splitlines()) == 1 + 4  # header + one row per epoch
    for run in ("pretrained", "scratch"):  # fine-tuning's accuracy on its training batches, per epoch
        rows = (repo / f"plots/finetune/{run}/plots/metrics/train_accuracy.tsv").read_text().splitlines()[1:]
        assert rows and all(0.0 <= float(row.split("\t")[-1]) <= 1.0 for row in rows)


def test_second_repro_changes_nothing(repo):
    before = (repo / "dvc.lock").read_text()
    out = run_dvc(repo, "repro")
    assert ran(out) == [] and "up to date" in out
    assert (repo / "dvc.lock").read_text() == before


def test_finetune_param_reruns_only_finetune_and_what_follows(repo):
    params = repo / "params.yaml"
    before = params.read_text()
    apply(repo, None, ["finetune.strategy=auto"])  # which also needs the pool: propagate is a candidate
    out = run_dvc(repo, "repro")
    assert ran(out) == ["finetune", "evaluate", "visualize"], out
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    auto = json.loads((repo / "metrics/evaluate_detail.json").read_text())["auto"]
    cv, choice = auto["cv_accuracy"], auto["choice"]
    assert set(cv) == {"linear", "partial", "full", "propagate"}
    assert metrics["strategy"] == f"auto -> {choice}"
    assert max(cv.values()) - cv[choice] <= auto["cv_gap_se"][choice]  # within one standard error of the best
    params.write_text(before)  # as the other tests of this repo expect it (the run cache restores the outputs)
    run_dvc(repo, "repro")
    assert dvc_status(repo) == {}


def test_kill_9_during_pretraining_resumes_to_the_same_weights(repo):
    output, state = repo / paths.PRETRAIN_STATE_FILE, repo / paths.PRETRAIN_RESUME_FILE
    reference = torch.load(output, weights_only=True)
    assert not state.exists()  # moved to the output: a finished state is never resumed (its code may change)
    # --force --no-run-cache: train (DVC would restore the outputs from its cache otherwise); cold:
    # a warm stage outlives its killed launcher by the moment its supervisor takes to kill it
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "--no-run-cache",
                             "pretrain"], cwd=repo, env={**VENV_ENV, warm.ENV: ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= killed_at < reference["epoch"], "the kill came after the last epoch"
    out = run_dvc(repo, "repro", "--force", "--single-item", "--no-run-cache", "pretrain")  # not from the cache
    assert f"resuming after epoch {killed_at}" in out
    resumed = torch.load(output, weights_only=True)
    assert resumed["epoch"] == reference["epoch"]
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    run_dvc(repo, "repro")  # the stages after it, for the tests that follow


def test_pretraining_is_in_the_run_cache(repo):
    """Another seed pretrains; back to the first, DVC restores its outputs without training (what
    lets a study's cells of one method and seed share one pretraining)."""
    params = repo / "params.yaml"
    before, state = params.read_text(), (repo / paths.PRETRAIN_STATE_FILE).read_bytes()
    try:
        apply(repo, None, ["seed=1"])
        assert ran(run_dvc(repo, "repro", "pretrain")) == ["ingest", "pretrain"]
        params.write_text(before)
        out = run_dvc(repo, "repro", "pretrain")
        assert "Stage 'pretrain' is cached - skipping run" in out and ran(out) == ["ingest"], out
        assert (repo / paths.PRETRAIN_STATE_FILE).read_bytes() == state
    finally:
        params.write_text(before)
    assert dvc_status(repo) == {}


def dvc_status(repo: Path) -> dict:
    return json.loads(run_dvc(repo, "status", "--json"))


def test_editing_a_profile_not_in_use_changes_nothing_dvc_sees(repo):
    profiles = repo / "profiles.yaml"
    before = profiles.read_text()
    profiles.write_text(before.replace("depth: 2, epochs: 30", "depth: 3, epochs: 31"))
    try:
        assert dvc_status(repo) == {}
    finally:
        profiles.write_text(before)


def test_switching_profile_reports_exactly_the_stages_whose_values_change(repo):
    params = repo / "params.yaml"
    before = params.read_text()
    try:
        apply(repo, "default")  # quick -> default changes ingest, pretrain and finetune values
        assert set(dvc_status(repo)) == {"ingest", "pretrain", "finetune"}
        params.write_text(before)
        apply(repo, "full")  # full sets pretrain and finetune keys only; visualize shows finetune.strategy's views
        assert set(dvc_status(repo)) == {"pretrain", "finetune", "visualize"}
    finally:
        params.write_text(before)
    assert dvc_status(repo) == {}


@pytest.mark.parametrize("module,stages", [
    ("prefine/models/weights.py", {"pretrain", "checkpoint", "finetune", "evaluate", "visualize"}),
    ("prefine/evaluate/probe.py", {"checkpoint", "finetune", "evaluate", "visualize"}),  # finetune: via auto
    ("prefine/data/store.py", {"ingest", "pretrain", "checkpoint", "finetune", "evaluate", "visualize"}),
])
def test_editing_a_module_a_stage_imports_makes_dvc_see_that_stage(repo, module, stages):
    file = repo / module
    before = file.read_text()
    file.write_text(before + "\n# edited\n")
    try:
        assert set(dvc_status(repo)) == stages
    finally:
        file.write_text(before)


def test_a_failed_run_leaves_the_workspace_as_it_was(repo):
    """DVC deletes ingest's outputs before running it; the failed run puts everything back."""
    before = {name: (repo / name).read_text() for name in ("params.yaml", "dvc.lock")}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "-S", "finetune.labels_per_class=100000"],
                            cwd=repo, env=VENV_ENV, capture_output=True, text=True)
    assert result.returncode == 10, result.stdout[-2000:]
    assert "finetune.labels_per_class" in result.stdout and "stage 'ingest' failed" in result.stdout
    assert {name: (repo / name).read_text() for name in before} == before
    assert (repo / "data/labeled/meta.json").is_file() and dvc_status(repo) == {}
