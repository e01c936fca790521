"""The Prefect flows against a real Prefect server, real DVC and real git.

One project per module, trained once (by two concurrent flow runs, one of them crashing once) in
the `first_training` fixture that every test asks for; each test leaves the project up to date,
so they pass in any order. The promotion
gate's outcomes (worse, better, rollback) are covered on fabricated runs in test_registry.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from uuid import UUID

import faults
from fleet_parts import settled, wait_for as _wait
import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTaskRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect_fixtures import TEST_PARAMS, dvc, git, make_project

from flows.dvc import Snapshot
from flows.gpu import host_limit
from flows.retrain import retrain
from flows.training import training
from prefine import registry
from prefine.params import RegistryParams

pytestmark = pytest.mark.e2e

PREFINE = [sys.executable, "-m", "flows.cli"]


@pytest.fixture(scope="module")
def project(prefect_server: str, fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("flows")
    watched = base / "incoming"
    shutil.copytree(fmnist_slice, watched)
    return make_project(base / "project", watched, TEST_PARAMS)


def _task_runs(flow_run_ids: list[UUID], training_only: bool = False) -> list:
    names = TaskRunFilter(name=TaskRunFilterName(any_=["pretrain", "finetune"])) if training_only else None
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), task_run_filter=names
        )


def _logs(task_runs: list[UUID] | None = None, flow_run: UUID | None = None) -> str:
    where = LogFilter(task_run_id=LogFilterTaskRunId(any_=task_runs)) if task_runs else LogFilter(
        flow_run_id=LogFilterFlowRunId(any_=[flow_run]))
    with get_client(sync_client=True) as client:
        return "\n".join(log.message for log in client.read_logs(where))


def _flow_run_id(state) -> UUID:
    return state.state_details.flow_run_id


@pytest.fixture(scope="module")
def first_training(project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The project's first training: two `prefine flow` runs at once, with a one-time crash of
    pretraining after epoch 1 injected (tests/faults.py) into whichever trains."""
    marker = tmp_path_factory.mktemp("fail-once") / "crashed"
    env = faults.subprocess_env(marker)
    command = [*PREFINE, "flow", "--repo", str(project), "--register", "--retries", "1", "--retry-delay", "0",
               "--retry-jitter", "0"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    with get_client(sync_client=True) as client:
        flow_runs = [f.id for f in client.read_flow_runs() if f.name in "".join(outputs)]
    assert len(flow_runs) == 2
    settled(lambda: _task_runs(flow_runs, training_only=True), 4)  # the tests below read their states
    return {"flow_runs": flow_runs, "marker": marker}


def test_concurrent_runs_never_share_the_gpu_slot(project: Path, first_training: dict) -> None:
    """The training tasks of one run never overlap those of the other (this host's slot limit is 1:
    no GPU here), and every slot is given back; the second run waits instead of failing, then
    finds the stages done."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(host_limit())
    assert (limit.limit, limit.active_slots) == (1, 0)
    gpu_runs = _task_runs(first_training["flow_runs"], training_only=True)
    assert {t.name for t in gpu_runs} == {"pretrain", "finetune"} and len(gpu_runs) == 4
    for a, b in combinations(gpu_runs, 2):
        if a.flow_run_id != b.flow_run_id:
            assert a.end_time <= b.start_time or b.end_time <= a.start_time, (a.name, b.name)
    pretrain_states = sorted(t.state.name for t in gpu_runs if t.name == "pretrain")
    assert pretrain_states == ["Completed", "Skipped"]  # one trained; the other found it done
    assert all("device:cpu" in t.tags for t in gpu_runs if t.state.name == "Completed")  # the device it used

    assert registry.prod(project).version == "v0.0.1"  # the first model becomes prod
    assert any((project.parent / "storage").iterdir())  # dvc push to the local remote


def test_transient_pretrain_failure_is_retried_and_resumes(project: Path, first_training: dict) -> None:
    assert first_training["marker"].exists()  # the crash happened
    pretrain = [t for t in _task_runs(first_training["flow_runs"]) if t.name == "pretrain"]
    retried = [t for t in pretrain if t.run_count == 2]
    assert len(retried) == 1 and retried[0].state.type == StateType.COMPLETED
    logs = _wait(lambda: (text := _logs([retried[0].id])) and "resuming" in text and text, 10, "the logs")
    assert "injected failure after epoch 1" in logs and "resuming after epoch 1" in logs
    assert json.loads((project / "metrics/pretrain.json").read_text())["epochs"] == 2


def test_flow_and_dvc_repro_agree_on_dvc_lock(project: Path, first_training: dict) -> None:
    lock = (project / "dvc.lock").read_text()
    assert "stages:" in git(project, "show", f"{registry.prod(project).commit}:dvc.lock")  # committed for the version
    repro = dvc(project, "repro")
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
    assert (project / "dvc.lock").read_text() == lock


def test_unchanged_run_skips_every_stage(project: Path, first_training: dict) -> None:
    state = training(repo=str(project), register_model=True, return_state=True)
    summary = state.result()
    assert set(summary["stages"].values()) == {"Skipped"}, summary
    assert summary["reason"].startswith("model unchanged")
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[_flow_run_id(state)]))
        )
    keys = {"prefine-metrics", "prefine-promotion", "prefine-plots", "prefine-class-gains"}  # + the run's pictures
    assert {a.key for a in artifacts} == keys


def test_deployment_run_is_picked_up_and_skips_unchanged_data(project: Path, first_training: dict) -> None:
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([*PREFINE, "serve", "--repo", str(project)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def deployed() -> bool:
            with get_client(sync_client=True) as client:
                try:
                    return bool(client.read_deployment_by_name("retrain/prefine-retrain"))
                except Exception:
                    return False

        _wait(deployed, 90, "the served deployment")
        triggered = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", "retrain/prefine-retrain"],
                                   capture_output=True, text=True, check=True).stdout
        run_id = UUID(re.search(r"UUID: ([0-9a-f-]{36})", triggered).group(1))

        def finished():
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
            return run if run.state.is_final() else None

        run = _wait(finished, 120, "the deployment run")
        assert run.state.type == StateType.COMPLETED, run.state.message
        _wait(lambda: "data unchanged" in _logs(flow_run=run_id), 10, "the run's logs")  # shipped in batches
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_retrain_runs_training_when_the_watched_folder_changes(project: Path, first_training: dict) -> None:
    watched = Path(yaml.safe_load((project / "params.yaml").read_text())["ingest"]["path"])
    (watched / "README.txt").write_text("new drop\n")  # a new file in the watched folder
    result = retrain(repo=str(project), registry=RegistryParams(push=False))
    assert result["retrained"] and result["stages"]["ingest"] == "Completed", result
    assert retrain(repo=str(project), registry=RegistryParams(push=False)) == {"retrained": False}


def test_concurrent_runs_with_different_overrides_each_train_what_they_asked(project: Path,
                                                                             first_training: dict) -> None:
    """Two runs in one checkout queue up (a run lock) instead of training on each other's params."""
    before = Snapshot.take(project)
    assert before.saved.parent == project / ".dvc" / "tmp"  # a killed run's copies stay with its repo
    command = [*PREFINE, "flow", "--repo", str(project), "--no-register"]
    runs = {steps: subprocess.Popen([*command, "-S", f"finetune.steps={steps}"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for steps in (6, 8)}
    outputs = {steps: run.communicate(timeout=600)[0] for steps, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), outputs
    with get_client(sync_client=True) as client:
        flow_runs = {steps: [f.id for f in client.read_flow_runs() if f.name in out] for steps, out in outputs.items()}
    for steps, ids in flow_runs.items():
        finetune = settled(lambda: [t for t in _task_runs(ids) if t.name == "finetune"], 1)
        assert finetune[0].state.name == "Completed", steps
        logs = _wait(lambda: (text := _logs([finetune[0].id])) and "steps, device" in text and text, 10, "logs")
        assert f"labeled images, {steps} steps" in logs
    before.restore()  # back to where this test found the project (unregistered runs leave it changed)
    assert "Running stage" not in dvc(project, "repro").stdout
