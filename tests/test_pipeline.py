"""The whole DAG through real `dvc repro` in a temp git repo, on a small Fashion-MNIST slice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ["dvc.yaml", "params.yaml", "prefine", "tasks", ".dvc/config", ".dvc/.gitignore"]
STAGES = ["ingest", "pretrain", "checkpoint", "finetune", "evaluate"]


# stage commands say `python`: the one running the tests, as in an activated venv
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, check=check)


def ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def make_repo(path: Path, fmnist_slice: Path) -> Path:
    """A fresh git + DVC repo holding the project's pipeline, set to the quick profile."""
    for name in PROJECT:
        src, dst = ROOT / name, path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["profile"] = "quick"
    params["ingest"]["path"] = str(fmnist_slice)
    params["profiles"]["quick"]["pretrain"]["epochs"] = 4
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(path, "git", "init", "-q")
    sh(path, "git", "add", "-A")
    sh(path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_slice) -> Path:
    path = make_repo(tmp_path_factory.mktemp("pipeline"), fmnist_slice)
    out = dvc(path, "repro").stdout
    assert ran(out) == STAGES, out
    return path


def test_repro_makes_every_output_and_metrics_dvc_reads(repo):
    for out in ["data/unlabeled", "data/labeled", "data/test", "models/encoder.safetensors",
                "models/classifier.safetensors", "models/scratch.safetensors", "models/encoder.card.json"]:
        assert (repo / out).exists(), out
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.1 < metrics["pretrained"]["accuracy"] <= 1.0  # better than chance on 10 classes
    assert set(metrics["pretrained"]["per_class"]) == set(metrics["scratch"]["per_class"])
    shown = dvc(repo, "metrics", "show", "--json").stdout
    assert "gain_over_scratch" in shown
    card = json.loads((repo / "models/encoder.card.json").read_text())
    assert card["lineage"]["git_commit"] and len(card["lineage"]["data"]["unlabeled"]) == 64
    assert 0.0 <= card["metrics"]["knn_accuracy"] <= 1.0
    loss_curve = repo / "plots/pretrain/plots/metrics/loss.tsv"
    assert len(loss_curve.read_text().splitlines()) == 1 + 4  # header + one row per epoch


def test_second_repro_changes_nothing(repo):
    before = (repo / "dvc.lock").read_text()
    out = dvc(repo, "repro").stdout
    assert ran(out) == [] and "up to date" in out
    assert (repo / "dvc.lock").read_text() == before


def test_finetune_param_reruns_only_finetune_and_evaluate(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["lr"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro").stdout
    assert ran(out) == ["finetune", "evaluate"], out


def test_kill_9_during_pretraining_resumes_to_the_same_weights(repo):
    state = repo / "models/pretrain/state.pt"
    reference = torch.load(state, weights_only=True)
    state.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=repo, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= killed_at < reference["epoch"], "the kill came after the last epoch"
    out = dvc(repo, "repro").stdout
    assert f"resuming after epoch {killed_at}" in out
    resumed = torch.load(state, weights_only=True)
    assert resumed["epoch"] == reference["epoch"]
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
