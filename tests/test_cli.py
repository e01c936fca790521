"""The `prefine` CLI: registry moves, and exit codes that say what failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect_fixtures import TEST_PARAMS, make_project
from test_registry import SETTINGS, repo, train  # noqa: F401
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

    assert "prod: classifier v0.0.2" in runner.invoke(app, ["registry", "show", "--repo", str(repo)]).output
    rolled = runner.invoke(app, ["registry", "rollback", "--repo", str(repo)])
    assert rolled.exit_code == 0 and "prod is now classifier v0.0.1" in rolled.output
    assert "prod: classifier v0.0.1" in runner.invoke(app, ["registry", "show", "--repo", str(repo)]).output
    missing = runner.invoke(app, ["registry", "rollback", "--repo", str(repo), "--to", "v9"])
    assert missing.exit_code == 1 and "no version v9" in missing.output


def test_bad_override_changes_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "data", TEST_PARAMS)
    before = (project / "params.yaml").read_text()
    result = runner.invoke(app, ["run", "--repo", str(project), "-S", "pretrain.lr=5"])
    assert result.exit_code == 2 and "pretrain.lr" in result.output, result.output
    assert (project / "params.yaml").read_text() == before


def test_failed_stage_is_named_in_exit_code_and_flow_state(prefect_server: str, tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tmp_path / "no-such-folder", TEST_PARAMS)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "flow", "--repo", str(project), "--no-register"],
                            capture_output=True, text=True)
    assert result.returncode == 10, result.stdout[-3000:]  # 10 + index of `ingest`
    assert "stage 'ingest' failed" in result.stdout
    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
    assert latest.state.type == StateType.FAILED and "stage 'ingest' failed" in latest.state.message
