"""The registry against real git and GTO: versions, the promotion gate, rollback; and the
training flow's register step (smoke runs, the outcome as tags and state message).

Training is stood in for by writing what a run leaves behind (dvc.lock hashes and
metrics/evaluate.json), so these tests take seconds; tests/test_flows.py runs the real thing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from prefect import flow, get_client
from prefect.states import State

from flows.report import outcome_message, outcome_tags
from flows.training import conclude, skip_reason
from prefine import registry
from prefine.params import RegistryParams, parse

SETTINGS = RegistryParams(metric="accuracy", margin=0.01, commit=True, push=False)
TEST_SET = {"sha256": "a" * 64, "images": 1200}  # what the evaluate stage records of data/test
CLASSES = ["t-shirt", "trouser"]


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


def evaluation(accuracy: float, test_set: dict | None = TEST_SET, classes: list[str] = CLASSES) -> dict:
    """metrics/evaluate.json as the evaluate stage writes it (`test_set=None`: as it did before)."""
    found = {"pretrained": {"accuracy": accuracy, "macro_f1": accuracy}, "scratch": {"accuracy": 0.5}, "classes": classes}
    return found if test_set is None else {**found, "test_set": test_set}


def train(repo: Path, accuracy: float, classifier: str, encoder: str = "e1", test_set: dict | None = TEST_SET) -> None:
    """What a pipeline run leaves for the registry: output hashes in dvc.lock, test metrics."""
    outs = {"checkpoint": (registry.ARTIFACT_FILES["encoder"], encoder), "finetune": (registry.ARTIFACT_FILES["classifier"], classifier)}
    lock = {"schema": "2.0", "stages": {s: {"outs": [{"path": p, "md5": m}]} for s, (p, m) in outs.items()}}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / registry.METRICS_FILE).write_text(json.dumps(evaluation(accuracy, test_set)))


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


def _prod(metrics: dict) -> registry.Version:
    return registry.Version("classifier", "v0.0.1", "abc", "", "", metrics)


def test_gate_margin_is_inclusive_and_uses_the_chosen_metric() -> None:
    prod = _prod({**evaluation(0.7), "pretrained": {"accuracy": 0.7, "macro_f1": 0.6}})
    settings = RegistryParams(metric="macro_f1", margin=0.05)
    assert registry.gate({**evaluation(0.0), "pretrained": {"accuracy": 0.0, "macro_f1": 0.65}}, prod, settings)[0]
    assert not registry.gate({**evaluation(0.9), "pretrained": {"accuracy": 0.9, "macro_f1": 0.64}}, prod, settings)[0]
    assert not registry.gate({}, None, settings)[0]


def test_gate_compares_only_the_same_test_set_classes_and_metric() -> None:
    prod, older = _prod(evaluation(0.7)), _prod(evaluation(0.7, test_set=None))
    refused = {  # why -> (candidate's metrics, prod)
        "test set differs: 1000 test images (sha256 bbbbbbbbbbbb) vs prod v0.0.1's 1200 test images":
            (evaluation(0.9, {"sha256": "b" * 64, "images": 1000}), prod),
        "classes differ": (evaluation(0.9, classes=["t-shirt", "dress"]), prod),
        "this run's metrics/evaluate.json has no test_set": (evaluation(0.9, test_set=None), prod),
        "prod v0.0.1's metrics/evaluate.json has no test_set": (evaluation(0.9), older),
        "prod v0.0.1 has no 'accuracy'": (evaluation(0.9), _prod({**evaluation(0.7), "pretrained": {}})),
    }
    for why, (candidate, current) in refused.items():
        promoted, reason = registry.gate(candidate, current, SETTINGS)
        assert not promoted and why in reason and "--force" in reason, reason
    assert registry.gate(evaluation(0.9), prod, SETTINGS)[0]


def test_model_on_another_test_set_stays_out_of_prod_unless_forced_with_a_reason(repo: Path) -> None:
    train(repo, 0.23, "c1")  # the case: a quick model on 1,200 test images became prod
    registry.register(repo, SETTINGS)
    train(repo, 0.9, "c2", test_set={"sha256": "b" * 64, "images": 1000})
    other = registry.register(repo, SETTINGS)
    assert not other.promoted and "1000 test images" in other.reason and registry.prod(repo).version == "v0.0.1"
    assert registry.REJECTED in registry.versions(repo)[0].message
    with pytest.raises(registry.RegistryError, match="v0.0.2 was not promoted .* needs --force and --reason"):
        registry.rollback(repo, "v0.0.2", force=True)
    registry.rollback(repo, "v0.0.2", force=True, reason="test split rebuilt on purpose")
    assert registry.prod_assignment(repo).message == (
        "rollback from v0.0.1 to v0.0.2 (forced past the gate): test split rebuilt on purpose")
    assert registry.prod(repo).version == "v0.0.2"


def test_each_rollback_steps_one_further_back(repo: Path) -> None:
    for accuracy, model in ((0.7, "c1"), (0.8, "c2"), (0.9, "c3")):
        train(repo, accuracy, model)
        registry.register(repo, SETTINGS)
    assert registry.prod_assignment(repo).message.startswith("gate: accuracy 0.9000 vs prod v0.0.2")
    assert registry.rollback(repo).version == "v0.0.2"
    assert registry.rollback(repo, reason="v0.0.2 is slow too").version == "v0.0.1"  # not back to v0.0.3
    assert registry.prod_assignment(repo).message == "rollback from v0.0.2 to v0.0.1: v0.0.2 is slow too"
    with pytest.raises(registry.RegistryError, match="only version"):
        registry.rollback(repo)
    with pytest.raises(registry.RegistryError, match="v0.0.1 is already prod"):
        registry.rollback(repo, "v0.0.1")
    assert registry.rollback(repo, "v0.0.3").version == "v0.0.3"
    assert [v.version for v in registry.prod_history(repo)] == ["v0.0.3", "v0.0.1"]
    assert registry.rollback(repo).version == "v0.0.1"


def test_smoke_runs_register_only_when_asked() -> None:
    smoke, full = parse({"ingest": {"limit": 600}}), parse({})
    assert "smoke run: ingest.limit is 600" in skip_reason(None, smoke)
    assert skip_reason(True, smoke) is None and skip_reason(None, full) is None
    assert "register_model=False" in skip_reason(False, full)


def test_outcome_tags_and_message_say_what_became_of_the_model() -> None:
    kept = {"profiles": [], "registered": True, "version": "v0.0.3", "promoted": False, "reason": "why"}
    assert outcome_tags(kept) == ["profile:custom", "version:v0.0.3", "not-promoted"]
    assert outcome_message(kept) == "classifier v0.0.3 not promoted: why"
    smoke = {"profiles": ["quick"], "registered": False, "reason": "smoke run"}
    assert outcome_tags(smoke) == ["profile:quick", "not-registered"]
    assert outcome_message(smoke) == "not registered: smoke run"


@flow
def _register_step(repo: str) -> State:
    return conclude(Path(repo), {"stages": {}}, None, SETTINGS, sync=False)


@pytest.mark.e2e
def test_flow_run_is_tagged_and_its_state_message_says_the_outcome(prefect_server: str, repo: Path) -> None:
    profiles = {"default": {"ingest": {"limit": None}}, "quick": {"ingest": {"limit": 1200}}}
    (repo / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    train(repo, 0.7, "c1")
    state = _register_step(str(repo), return_state=True)
    assert state.message.startswith("classifier v0.0.1 promoted to prod: first version")
    assert state.result()["version"] == "v0.0.1"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert set(run.tags) == {"profile:default", "version:v0.0.1", "promoted"} and run.state.message == state.message
