"""Warm processes for the tests: a server per pytest worker imports torch, DVC and the other
heavy libraries once, and each `python -m tasks.<stage>`, `python -m dvc` and torchrun (with its
ranks) the tests start, directly or through DVC and Prefect, is forked from it instead of
importing them again.

The suite starts about 200 stage processes, each of which spent 3-5 s importing before doing a
second of work on a tiny project, and hundreds of DVC commands (0.4 s of imports each): most of
the tests' CPU. A forked process still runs on its own, in the caller's cwd, with its argv,
environment and stdio, and imports the project's own copy of `prefine` and `tasks` (the server
keeps only third-party modules).

How a command is served: `tests/warm_site/sitecustomize.py` runs in every Python process the
tests start; for a served command it sends the request and its stdio to the server (`client`),
which forks a supervisor, which forks the command (`_supervise`). The client waits for the exit
status and ends the same way; a signal it receives is passed on; when the client dies (kill -9),
the supervisor kills the command's process group. What the server cannot run as a fresh
interpreter would (interpreter options other than -u, a PYTHONPATH folder shadowing a module it
imported, other thread counts, no server yet) runs cold, as usual. A sitecustomize that comes
before ours on the PYTHONPATH (the fault injections') is run in the fork, as an interpreter would.

Stdlib only above `serve`: the client side is imported by every Python process of the tests.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

ENV = "PREFINE_TEST_WARM"  # the server's abstract socket name; unset or empty: everything cold
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warm_site")
SAME = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # read once, at the server's start
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MODULES = ("dvc", "torch.distributed.run")  # served besides the project's own tasks.<stage>


def _address(name: str) -> str:
    return "\0" + name  # abstract namespace: no file to clean up, gone with the server


def served(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """(module, its args, unbuffered) of `python [-u] -m <module> ...` for a stage, DVC or torchrun
    (whose ranks are stages again, started with -u), or None for any other command."""
    unbuffered = argv[1:2] == ["-u"]
    rest = argv[2 if unbuffered else 1:]
    if len(rest) < 2 or rest[0] != "-m" or not (rest[1] in MODULES or rest[1].startswith("tasks.")):
        return None
    return rest[1], rest[2:], unbuffered


def client() -> None:
    """In a Python process just started: hand a served command to the server and end as it ends.
    Returns (the process goes on cold) for any other command, or when no server takes it."""
    name = os.environ.get(ENV)
    command = served(sys.orig_argv) if name else None
    if command is None:
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    module, args, unbuffered = command
    request = {"module": module, "args": args, "unbuffered": unbuffered, "cwd": os.getcwd(), "env": dict(os.environ),
               "umask": _umask()}
    try:
        conn.connect(_address(name))
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        answer = conn.recv(64)
    except OSError:
        conn.close()
        return
    if answer != b"ok":  # the server says this one must run cold
        conn.close()
        return
    try:  # the command runs now: whatever happens here, never run it a second time, cold
        for number in FORWARDED:
            signal.signal(number, lambda signum, _frame: conn.send(str(signum).encode()))
        code = os.waitstatus_to_exitcode(int(conn.recv(64) or signal.SIGKILL))  # nothing: the supervisor died
        if code < 0:  # killed by a signal: so are we
            if -code not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)
    finally:
        os._exit(1)


def wait_ready(name: str, timeout: float) -> None:
    """Block until the server named `name` accepts connections (it imports for a few seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(_address(name))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no warm server {name!r} after {timeout} s") from None
        time.sleep(0.1)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _supervise(conn: socket.socket) -> None:
    """In a process forked from the server for one request: fork the command, pass on the
    client's signals, kill the command when the client goes, send the command's wait status."""
    payload, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
    request = json.loads(payload)
    if not _servable(request["env"]):
        conn.send(b"cold")
        os._exit(0)
    conn.send(b"ok")
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become(request, fds)
    for fd in fds:
        os.close(fd)
    exited = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, exited], [], [])
        if exited in ready:
            _, status = os.waitpid(pid, 0)
            conn.send(str(status).encode())
            os._exit(0)
        message = conn.recv(64)
        if not message:  # the client is gone (killed): so is its command, and what it started
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os._exit(0)
        os.kill(pid, int(message))


def python_path(env: dict[str, str]) -> list[str]:
    """The folders of PYTHONPATH in `env`, in order."""
    return [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]


def _servable(env: dict[str, str]) -> bool:
    """Whether a fresh interpreter with `env` would import what the server imported: the same
    thread counts and hash seed, and no folder added to PYTHONPATH (Prefect adds a flow's code
    folder) that holds a module of the same name as one already imported."""
    if any(env.get(key) != os.environ.get(key) for key in SAME):
        return False
    added = set(python_path(env)) - set(python_path(os.environ))
    loaded = {name for name in sys.modules if "." not in name} - {"sitecustomize"}  # the fork runs its own
    for folder in filter(os.path.isdir, added):
        if any(entry.removesuffix(".py") in loaded for entry in os.listdir(folder)):
            return False
    return True


def _become(request: dict, fds: list[int]) -> None:
    """Become `python -m <module> <args>` as the client was started: its stdio, cwd,
    environment and umask; the project's own modules; exit as the interpreter would."""
    import atexit
    import runpy
    import traceback

    os.setpgid(0, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for number in (*FORWARDED, signal.SIGCHLD):
        signal.signal(number, signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL)
    ours = {sys.path[0], *python_path(os.environ)}
    # what `python -m` builds: the cwd, PYTHONPATH, then the interpreter's own folders
    sys.path[:] = [request["cwd"], *python_path(request["env"]), *(p for p in sys.path if p not in ours)]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    _run_sitecustomize()
    if request["unbuffered"]:  # -u
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:  # sys.exit(n), sys.exit("message"), sys.exit()
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _run_sitecustomize() -> None:
    """Import the sitecustomize a fresh interpreter would find on this sys.path, when it is not
    the server's own (tests/fault_site's installs the fault injections: tests/faults.py)."""
    import importlib
    import importlib.util

    ours = sys.modules.pop("sitecustomize", None)
    spec = importlib.util.find_spec("sitecustomize")
    if spec is None or ours is not None and spec.origin == ours.__file__:
        sys.modules["sitecustomize"] = ours
        return
    importlib.import_module("sitecustomize")


def serve(name: str, root: str) -> None:
    """Import what the served commands import, forget the project's own modules, and fork a
    supervisor per request until the parent (the pytest worker) is gone."""
    sys.path.insert(0, root)
    import matplotlib

    matplotlib.use("Agg")
    for module in ("tasks.ingest", "tasks.pretrain", "tasks.checkpoint", "tasks.finetune", "tasks.evaluate",
                   "tasks.visualize", "torchvision", "sklearn.linear_model", "sklearn.manifold",
                   "sklearn.decomposition", "matplotlib.pyplot", "safetensors.torch", "pyarrow.parquet", "tqdm",
                   "dvc.cli.parser", "dvc.repo.index", "dvc.repo.reproduce", "dvc.repo.plots",
                   "dvc.repo.experiments.run", "dvc.scm", "dvc.lock", "dvc.stage", "dvc.output", "dvc.dependency",
                   "dvc.commands.repro", "dvc.commands.status", "dvc.commands.experiments", "dvc.commands.data_sync",
                   "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.show", "dvc_s3", "scmrepo.git", "pygit2",
                   "rich.console", "torch.distributed.run"):
        __import__(module)
    for module in [m for m in sys.modules if m.split(".")[0] in ("prefine", "tasks")]:
        del sys.modules[module]
    sys.path.remove(root)
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(_address(name))
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    while os.getppid() == parent:
        if not select.select([server], [], [], 1.0)[0]:
            continue
        conn, _ = server.accept()
        if os.fork() == 0:
            try:  # never back into this loop: a supervisor that fails closes the client's connection
                server.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _supervise(conn)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
