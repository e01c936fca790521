"""The `prefine` CLI: registry moves, and exit codes that say what failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_fixtures import TEST_PARAMS, make_project
from test_registry import SETTINGS, TEST_SET, repo, train  # noqa: F401
from typer.testing import CliRunner

from flows.cli import app
from prefine import registry

runner = CliRunner()


def test_registry_list_show_and_rollback(repo: Path) -> None:
    for accuracy, model in ((0.7, "c1"), (0.9, "c2")):
        train(repo, accuracy, model)
        registry.register(repo, SETTINGS)
    listed = runner.invoke(app, ["registry", "list", "--repo", str(repo)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if "│ v0.0" in line}
    assert "prod" in rows["v0.0.2"] and "0.9000" in rows["v0.0.2"]
    assert "prod" not in rows["v0.0.1"] and "0.7000" in rows["v0.0.1"]

    shown = runner.invoke(app, ["registry", "show", "--repo", str(repo)]).output
    assert "prod: classifier v0.0.2" in shown and "why: gate: accuracy 0.9000 vs prod v0.0.1" in shown
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        rolled = runner.invoke(app, ["registry", "rollback", "--repo", str(repo), "--reason", "v0.0.2 misbehaves"])
    assert rolled.exit_code == 0 and "prod is now classifier v0.0.1" in rolled.output
    assert "unreachable" in rolled.output  # a warning: the rollback itself is done
    shown = runner.invoke(app, ["registry", "show", "--repo", str(repo)]).output
    assert "prod: classifier v0.0.1" in shown and "why: rollback from v0.0.2 to v0.0.1: v0.0.2 misbehaves" in shown
    missing = runner.invoke(app, ["registry", "rollback", "--repo", str(repo), "--to", "v9"])
    assert missing.exit_code == 1 and "no version v9" in missing.output


@pytest.mark.e2e
def test_forced_rollback_is_recorded_in_git_and_as_a_prefect_event(prefect_server: str, repo: Path) -> None:
    train(repo, 0.7, "c1")
    registry.register(repo, SETTINGS)
    train(repo, 0.9, "c2", test_set={**TEST_SET, "sha256": "b" * 64})  # kept out of prod by the gate
    registry.register(repo, SETTINGS)
    refused = runner.invoke(app, ["registry", "rollback", "--repo", str(repo), "--to", "v0.0.2"])
    assert refused.exit_code == 1 and "needs --force and --reason" in refused.output
    args = ["registry", "rollback", "--repo", str(repo), "--to", "v0.0.2", "--force", "--reason", "new split"]
    assert runner.invoke(app, args).exit_code == 0
    why = "rollback from v0.0.1 to v0.0.2 (forced past the gate): new split"
    assert f"why: {why}" in runner.invoke(app, ["registry", "show", "--repo", str(repo)]).output
    deadline = time.monotonic() + 30
    rollbacks = EventFilter(event=EventNameFilter(name=["prefine.registry.rollback"]))
    with get_client(sync_client=True) as client:  # events reach the server in the background
        while not (events := client.read_events(rollbacks, limit=10).events):  # the server allows 50 at most
            assert time.monotonic() < deadline, "no prefine.registry.rollback event"
            time.sleep(1)
    assert events[0].payload == {"repo": str(repo.resolve()), "from": "v0.0.1", "to": "v0.0.2", "message": why}


def test_flow_command_passes_the_register_choice_and_the_absolute_repo(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    summary = {"stages": {}, "seconds": {}, "registered": False, "reason": "a test"}  # what the flow returns
    monkeypatch.setattr("flows.training.training", lambda **kwargs: calls.append(kwargs) or summary)
    monkeypatch.chdir(repo)
    for flag in ([], ["--register"], ["--no-register"]):
        assert runner.invoke(app, ["flow", *flag]).exit_code == 0
    assert [call["register_model"] for call in calls] == [None, True, False]  # None: unless a smoke run
    assert calls[0]["repo"] == str(repo.resolve())


@pytest.mark.e2e
def test_bad_override_changes_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "data", TEST_PARAMS)
    before = (project / "params.yaml").read_text()
    result = runner.invoke(app, ["run", "--repo", str(project), "-S", "pretrain.lr=5"])
    assert result.exit_code == 2 and "pretrain.lr" in result.output, result.output
    assert (project / "params.yaml").read_text() == before


@pytest.mark.e2e
def test_failed_stage_is_named_in_exit_code_and_flow_state(prefect_server: str, fmnist_slice: Path,
                                                           tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", fmnist_slice, [*TEST_PARAMS, "finetune.labels_per_class=100000"])
    result = subprocess.run([sys.executable, "-m", "flows.cli", "flow", "--repo", str(project), "--no-register"],
                            capture_output=True, text=True)
    assert result.returncode == 10, result.stdout[-3000:]  # 10 + index of `ingest`
    assert "stage 'ingest' failed" in result.stdout and "Traceback" not in result.stdout + result.stderr
    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
    assert latest.state.type == StateType.FAILED and "stage 'ingest' failed" in latest.state.message
    assert not any((project / "data" / split).exists() for split in ("unlabeled", "labeled", "test"))


@pytest.mark.e2e
def test_a_missing_data_folder_is_one_line_before_any_stage(prefect_server: str, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "no-such-folder", TEST_PARAMS)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "flow", "--repo", str(project), "--no-register"],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "no-such-folder: not found (ingest.path)" in result.stdout
