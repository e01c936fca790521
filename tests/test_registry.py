"""The registry against real git and GTO: versions, the promotion gate, rollback.

Training is stood in for by writing what a run leaves behind (dvc.lock hashes and
metrics/evaluate.json), so these tests take seconds; tests/test_flows.py runs the real thing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from prefine import registry
from prefine.params import RegistryParams

SETTINGS = RegistryParams(metric="accuracy", margin=0.01, commit=True, push=False)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "ci@example.com")
    _git(tmp_path, "config", "user.name", "CI")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    artifacts = yaml.safe_load(Path("dvc.yaml").read_text())["artifacts"]  # the project's entries
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": artifacts}))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def train(repo: Path, accuracy: float, classifier: str, encoder: str = "e1") -> None:
    """What a pipeline run leaves for the registry: output hashes in dvc.lock, test metrics."""
    outs = {"checkpoint": (registry.ARTIFACT_FILES["encoder"], encoder), "finetune": (registry.ARTIFACT_FILES["classifier"], classifier)}
    lock = {"schema": "2.0", "stages": {s: {"outs": [{"path": p, "md5": m}]} for s, (p, m) in outs.items()}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    (repo / "metrics").mkdir(exist_ok=True)
    metrics = {"pretrained": {"accuracy": accuracy, "macro_f1": accuracy}, "scratch": {"accuracy": 0.5}}
    (repo / registry.METRICS_FILE).write_text(json.dumps(metrics))


def test_gate_promotes_first_and_better_keeps_worse_and_rolls_back(repo: Path) -> None:
    train(repo, 0.70, "c1")
    first = registry.register(repo, SETTINGS)
    assert (first.promoted, first.new, first.version.version) == (True, True, "v0.0.1")
    assert "first version" in first.reason

    train(repo, 0.705, "c2")  # better, but by less than the margin
    worse = registry.register(repo, SETTINGS)
    assert worse.new and not worse.promoted
    assert "< margin" in worse.reason and "v0.0.1" in worse.reason
    assert registry.prod(repo).version == "v0.0.1"
    listed = registry.versions(repo)[0]
    assert listed.version == worse.version.version and "gate:" in listed.message  # the reason is recorded

    train(repo, 0.80, "c3", encoder="e2")
    better = registry.register(repo, SETTINGS)
    assert better.promoted and better.previous_prod.version == "v0.0.1"
    assert better.encoder == "v0.0.2"  # a new encoder got a version of its own
    assert registry.prod(repo).version == better.version.version == "v0.0.3"
    assert registry.prod(repo).score("accuracy") == 0.80

    restored = registry.rollback(repo)
    assert restored.version == "v0.0.1" == registry.prod(repo).version
    assert registry.rollback(repo, "v0.0.3").version == registry.prod(repo).version == "v0.0.3"


def test_unchanged_model_reuses_its_version(repo: Path) -> None:
    train(repo, 0.7, "c1")
    registry.register(repo, SETTINGS)
    again = registry.register(repo, SETTINGS)
    assert not again.new and again.promoted and again.version.version == "v0.0.1"
    assert [v.version for v in registry.versions(repo)] == ["v0.0.1"]
    assert [v.version for v in registry.versions(repo, registry.ENCODER_ARTIFACT)] == ["v0.0.1"]


def test_rollback_needs_an_earlier_prod(repo: Path) -> None:
    with pytest.raises(registry.RegistryError, match="no version has been in prod"):
        registry.rollback(repo)
    train(repo, 0.7, "c1")
    registry.register(repo, SETTINGS)
    with pytest.raises(registry.RegistryError, match="only version"):
        registry.rollback(repo)
    with pytest.raises(registry.RegistryError, match="no version v9"):
        registry.rollback(repo, "v9")


def test_gate_margin_is_inclusive_and_uses_the_chosen_metric() -> None:
    prod = registry.Version("classifier", "v0.0.1", "abc", "", "", {"pretrained": {"accuracy": 0.7, "macro_f1": 0.6}})
    settings = RegistryParams(metric="macro_f1", margin=0.05)
    assert registry.gate({"pretrained": {"accuracy": 0.0, "macro_f1": 0.65}}, prod, settings)[0]
    assert not registry.gate({"pretrained": {"accuracy": 0.9, "macro_f1": 0.64}}, prod, settings)[0]
    assert not registry.gate({}, None, settings)[0]
