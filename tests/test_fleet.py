"""Beyond one machine, on loopback with real parts (tests/fleet_parts.py): a Prefect server, a
`process` work pool with two workers, a bare git repo as the origin, and SeaweedFS (a real
S3-compatible server) as the shared DVC remote."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from itertools import combinations
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from filelock import FileLock
import yaml
from fleet_parts import (
    KEYS, PREFINE, Origin, Storage, client, deploy, lose_host, make_origin, prefect_server, run_all, seaweedfs,
    settled, wait_for, workers,
)
from prefect.client.schemas.filters import (
    FlowFilter, FlowFilterName, FlowRunFilter,
    FlowRunFilterId, TaskRunFilter, TaskRunFilterName,
)
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect_fixtures import TEST_PARAMS, dvc, git
from projects import ROOT
from typer.testing import CliRunner

from flows.cli import app
from flows.gpu import LEASE_S, ensure_limit, host_limit

pytestmark = pytest.mark.e2e

POOL = "fleet"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with prefect_server(tmp_path_factory.mktemp("fleet-prefect")) as env:
        yield env


def _slots(api: dict[str, str]) -> tuple[int, int]:
    with client(api) as prefect:
        limit = prefect.read_global_concurrency_limit_by_name(host_limit())
    return limit.limit, limit.active_slots


HOLDER = ("import sys\nfrom flows.gpu import gpu_slot\nfrom prefine.params import ResourcesParams\n"
          "with gpu_slot(ResourcesParams(devices={devices})) as held:\n    print(held, flush=True)\n"
          "    sys.stdin.readline()\n")


def _holder(env: dict[str, str], devices: int = 1) -> subprocess.Popen:
    """A process that takes `devices` GPU slots of this host, prints its devices, and holds them
    until its stdin closes."""
    return subprocess.Popen([sys.executable, "-c", HOLDER.format(devices=devices)], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _line(process: subprocess.Popen, timeout: float) -> str | None:
    """The next line `process` prints within `timeout` seconds, else None."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        return process.stdout.readline().strip() if selector.select(timeout) else None


@pytest.fixture
def fake_gpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One test at a time fakes GPUs: devices are claimed host-wide (abstract sockets, as on a real
    host), so two xdist workers' tests would take each other's fake devices. The lock file lies in
    the folder every worker's temp folder is made in."""
    with FileLock(tmp_path_factory.getbasetemp().parent / "fake-gpus.lock"):
        yield


def _forget_host_limit(api: dict[str, str]) -> None:
    with client(api) as prefect, suppress(ObjectNotFound):
        prefect.delete_global_concurrency_limit_by_name(host_limit())


def test_a_held_slot_outlives_its_lease_and_a_killed_holder_gives_its_slot_back(api: dict[str, str], fake_gpus) -> None:
    """Two fake GPUs: two holders get a device each and a third waits. Killing one (-9) frees its
    slot once its lease runs out, and the waiter gets that device; the other holder, past its
    first lease by then, still holds its slot (renewed). Then every slot comes back."""
    _forget_host_limit(api)  # sized below to the fake GPUs, then dropped for the tests after this one
    env = {**api, "CUDA_VISIBLE_DEVICES": "0,1"}
    try:
        holders = [_holder(env) for _ in range(2)]
        started = time.monotonic()
        devices = [_line(h, 60) for h in holders]
        assert sorted(devices) == ["0", "1"]  # a device each
        assert _slots(api) == (2, 2)
        waiter = _holder(env)
        assert _line(waiter, 3) is None  # no slot free
        kept, killed = holders
        killed.kill()
        killed.wait()
        assert _line(waiter, LEASE_S + 60) == devices[1]  # the killed holder's device and slot,
        assert time.monotonic() - started > LEASE_S  # back once its lease ran out
        assert _slots(api) == (2, 2) and kept.poll() is None  # the survivor's lease was renewed
        for holder in (kept, waiter):
            holder.stdin.close()
            assert holder.wait(timeout=30) == 0
        assert _slots(api) == (2, 0)
        with temporary_settings({PREFECT_API_URL: api["PREFECT_API_URL"]}):
            assert ensure_limit(host_limit(), 5) == 2  # an existing limit is never resized
    finally:
        _forget_host_limit(api)


def test_a_multi_device_stage_holds_a_slot_and_a_device_per_rank(api: dict[str, str], fake_gpus) -> None:
    """Four fake GPUs: a 2-device holder gets two devices and two slots, a second one the other
    two, a 1-device holder then waits; asking for more devices than the host has is an error."""
    _forget_host_limit(api)
    env = {**api, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    holders = []
    try:
        holders = [_holder(env, devices=2) for _ in range(2)]
        held = [_line(h, 60) for h in holders]
        assert sorted(",".join(held).split(",")) == ["0", "1", "2", "3"] and all(len(h.split(",")) == 2 for h in held)
        assert _slots(api) == (4, 4)
        waiter = _holder(env)
        holders.append(waiter)
        assert _line(waiter, 3) is None
        holders[0].stdin.close()
        assert _line(waiter, 30) in held[0].split(",")
        too_many = _holder(env, devices=5)
        assert too_many.wait(timeout=60) != 0
        assert "resources.devices is 5 but this host has 4 GPU(s): 0,1,2,3" in too_many.stderr.read()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        _forget_host_limit(api)


def test_deploy_names_what_is_missing(tmp_path: Path) -> None:
    """`prefine deploy` fails in one line naming the checkout without an origin, or the server."""
    git(tmp_path, "init", "-q")
    runner = CliRunner()
    no_origin = runner.invoke(app, ["deploy", "--repo", str(tmp_path)])
    assert no_origin.exit_code == 2 and "no git remote 'origin'" in no_origin.output
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        no_server = runner.invoke(app, ["deploy", "--origin", f"file://{tmp_path}"])
    assert no_server.exit_code == 2 and "Prefect server at http://127.0.0.1:9/api unreachable" in no_server.output


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as storage:
        yield storage


@pytest.fixture(scope="module")
def origin(s3: Storage, fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Origin:
    """The project in a bare repo, with a bucket as its remote; the quick profile, tinier."""
    remote = f"{s3.bucket('prefine-fleet')}/prefine"
    return make_origin(tmp_path_factory.mktemp("fleet"), fmnist_slice, s3, remote, [*TEST_PARAMS, "pretrain.epochs=1"])


@pytest.fixture(scope="module")
def fleet(api: dict[str, str], s3: Storage, origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """`prefine deploy` onto a new process pool, then two workers on it; yields their logs."""
    env = {**api, **KEYS}
    assert deploy(env, POOL, origin).count(f"on pool {POOL}") == 3
    with workers(env, POOL, tmp_path_factory.mktemp("workers"), 2) as logs:
        yield logs


def _training_tasks(api: dict[str, str], flow_runs: list) -> list:
    with client(api) as prefect:
        return prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in flow_runs])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["pretrain", "finetune"])))


def _ran_on(logs: list[Path], run_id: UUID) -> list[str]:
    """The workers whose output holds the flow run's own log (a worker may try to take a run
    another one took first: the server aborts that submission)."""
    return [log.stem for log in logs if f"/flow-run/{run_id}" in log.read_text()]


def test_runs_fan_out_and_a_fresh_clone_gets_their_models_and_the_prod_version(
    api: dict[str, str], origin: Origin, fleet: list[Path], tmp_path: Path
) -> None:
    """Two registered runs at once, one per worker, each in its own clone: their training tasks
    take turns on this host's one GPU slot. The last one registered is on the origin's branch:
    rerun, it trains nothing, and the scheduled retrain finds the data unchanged. Another folder
    clones the origin: `dvc pull` brings that run's files and `prefine registry show` the prod
    version."""
    first = run_all(api, [{"overrides": [f"finetune.lr={lr}"], "register_model": True} for lr in (0.003, 0.001)])
    assert sorted(_ran_on(fleet, r.id) for r in first) == [["worker-1"], ["worker-2"]]
    tasks = settled(lambda: _training_tasks(api, first), 4)
    assert len(tasks) == 4 and all(t.state.name == "Completed" and "device:cpu" in t.tags for t in tasks)
    for a, b in combinations(tasks, 2):
        if a.flow_run_id != b.flow_run_id:
            assert a.end_time <= b.start_time or b.end_time <= a.start_time, (a.name, b.name)
    assert _slots(api) == (1, 0)
    tags = git(origin.checkout, "ls-remote", "--tags", "origin")
    assert "classifier@v0.0.1" in tags and "classifier@v0.0.2" in tags and "classifier#prod#1" in tags

    clone = tmp_path / "another-host"
    git(tmp_path, "clone", "-q", origin.url, str(clone))
    last = yaml.safe_load((clone / "params.yaml").read_text())["finetune"]["lr"]
    again = run_all(api, [{"overrides": [f"finetune.lr={last}"]}])
    assert {t.state.name for t in settled(lambda: _training_tasks(api, again), 2)} == {"Skipped"}
    retrained = run_all(api, [{}], deployment="retrain/prefine-retrain")
    assert retrained[0].state.message.startswith("data unchanged"), retrained[0].state.message

    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=clone, env={**os.environ, **KEYS},
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "models/classifier.safetensors").is_file()
    assert "up to date" in dvc(clone, "status").stdout
    shown = subprocess.run([*PREFINE, "registry", "show", "--repo", str(clone)], capture_output=True, text=True)
    assert shown.returncode == 0 and re.search(r"prod: classifier v0\.0\.[12] ", shown.stdout), shown.stdout


STUDY = ["study.methods=[autoencoder, simclr]", "study.budgets=[1, 2]", "study.seeds=[1]", "study.finetune={steps: 5}"]


def _cell_runs(api: dict[str, str], containing: str = "") -> list:
    """The training flow runs that were a study's cells (their `experiment` parameter names them)."""
    with client(api) as prefect:
        runs = prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["training"])))
    return [r for r in runs if (r.parameters.get("experiment") or "").startswith("study-")
            and containing in r.parameters["experiment"]]


STUDY_RUN = ("import json, sys\nfrom flows.study import label_budget_study\n"
             "print(json.dumps(label_budget_study(repo=sys.argv[1], overrides=json.loads(sys.argv[2]), "
             "deployment=sys.argv[3] or None)))")


def _study_of(api: dict[str, str], base: Path, origin: Origin, overrides: list[str],
              deployment: str | None = "training/prefine-training") -> dict:
    """A study in a fresh clone of the origin, run by a process of its own (so no Prefect client
    of this one stays bound to the module's server): its cells on the pool (`deployment`), or in
    clones here (None). Its summary."""
    clone = base / "study"
    base.mkdir(parents=True, exist_ok=True)
    git(base, "clone", "-q", origin.url, str(clone))
    done = subprocess.run([sys.executable, "-c", STUDY_RUN, str(clone), json.dumps(overrides), deployment or ""],
                          env={**api, **KEYS}, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_study_fans_its_cells_out_over_the_workers_and_a_rerun_trains_nothing(
    api: dict[str, str], origin: Origin, fleet: list[Path], tmp_path: Path
) -> None:
    """The study runs its 4 cells as training runs on the pool: both workers take cells, no two
    training tasks of the host overlap (one GPU slot), the second budget of each method takes its
    pretraining from the run-cache, each cell is an experiment ref on the origin. A rerun finds
    every cell on the origin and starts no training run; one of the cells, run on one host, gives
    the same rows."""
    summary = _study_of(api, tmp_path / "a", origin, STUDY)
    assert (summary["cells"], summary["ran"]) == (4, 4)
    cells = _cell_runs(api, "-seed1-")  # this study's: no other test trains seed 1 (the registered runs' seed 0
    # pretraining would be in the run-cache had they run first; the lost-host test's are seed 3)
    assert len(cells) == 4 and all(c.state.name == "Completed" for c in cells)
    assert {w for c in cells for w in _ran_on(fleet, c.id)} == {"worker-1", "worker-2"}
    tasks = settled(lambda: _training_tasks(api, cells), 8)
    for a, b in combinations([t for t in tasks if t.state.name == "Completed"], 2):
        if a.flow_run_id != b.flow_run_id:
            assert a.end_time <= b.start_time or b.end_time <= a.start_time, (a.name, b.name)
    assert sorted(t.state.name for t in tasks if t.name == "pretrain") == ["Completed", "Completed", "Skipped", "Skipped"]
    assert _slots(api)[1] == 0
    refs = git(origin.checkout, "ls-remote", "origin", "refs/exps/*").splitlines()
    assert len([ref for ref in refs if "/study-" in ref and "-seed1-" in ref]) == 4
    table = pd.read_csv(summary["csv"])

    again = _study_of(api, tmp_path / "b", origin, STUDY)
    assert again["ran"] == 0 and len(_cell_runs(api, "-seed1-")) == 4 and pd.read_csv(again["csv"]).equals(table)
    one_cell = [*STUDY, "study.methods=[simclr]", "study.budgets=[1]"]  # the same cell: its name is its overrides
    one_host = _study_of(api, tmp_path / "c", origin, one_cell, None)  # its clone does not look at the origin's refs
    here, keys = pd.read_csv(one_host["csv"]), ["method", "labels_per_class", "seed"]
    assert one_host["ran"] == 1 and len(here) == 7 and table.merge(here[keys], on=keys).equals(here)


def test_a_cell_whose_worker_dies_runs_again_on_another_and_the_study_completes(
    api: dict[str, str], origin: Origin, fleet: list[Path], tmp_path: Path
) -> None:
    """A one-cell study on a pool of its own with two workers: once the cell's pretraining runs,
    its worker and everything under it get SIGKILL (a lost host). The ZOMBIES automation marks
    the silent flow run Crashed, the study's cell task runs the cell again, the other worker
    takes it, the study completes, and no GPU slot stays held."""
    env = {**api, **KEYS}
    pool = "fleet-lost-host"
    assert deploy(env, pool, origin).count(f"on pool {pool}") == 3
    try:
        with workers(env, pool, tmp_path, 2) as pair, ThreadPoolExecutor(1) as background:
            study = background.submit(lambda: _study_of(api, tmp_path, origin, ["study.seeds=[3]", "study.budgets=[1]",
                                                                              "study.methods=[autoencoder]"]))
            running = wait_for(lambda: [t for t in _training_tasks(api, _cell_runs(api, "seed3"))
                                        if t.name == "pretrain" and t.state.name == "Running"], 600, "a pretraining")
            [lost] = _ran_on(pair, running[0].flow_run_id)
            lose_host(pair.processes[lost])
            summary = study.result(timeout=900)
        assert summary["ran"] == 1
        runs = sorted(_cell_runs(api, "seed3"), key=lambda r: r.start_time)
        assert [r.state.name for r in runs] == ["Crashed", "Completed"], [(r.state.name, r.state.message) for r in runs]
        assert "no heartbeat" in runs[0].state.message and _ran_on(pair, runs[1].id) != [lost]
        assert _slots(api)[1] == 0
    finally:
        deploy(env, POOL, origin)  # the module's deployments back on its own pool
