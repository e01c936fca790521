"""The tests' warm stage launcher (tests/warm.py) must start a stage as a fresh interpreter
would: what these tests check is what every end-to-end test relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
import warm

PROBE = """
import json, os, sys, time
warm = "torch" in sys.modules
import torch
print(json.dumps({"torch": warm, "pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0],
                  "env": os.environ.get("PROBE_VALUE"), "tasks": __import__("tasks").__file__,
                  "float64": torch.get_default_dtype() == torch.float64}), flush=True)
if "fail" in sys.argv:
    raise ValueError("probe failed")
if "exit" in sys.argv:
    sys.exit(3)
if "sleep" in sys.argv:
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with its own `tasks` package, as a test project has; the session's server up."""
    if not os.environ.get(warm.ENV):
        pytest.skip(f"{warm.ENV} is empty: every stage runs cold in this session")
    root = tmp_path_factory.mktemp("warm-project")
    (root / "tasks").mkdir()
    (root / "tasks" / "__init__.py").write_text("")
    (root / "tasks" / "probe.py").write_text(PROBE)
    warm.wait_ready(os.environ[warm.ENV], timeout=120)
    return root


def start(project: Path, *args: str, base: dict[str, str] | None = None, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tasks.probe", *args], cwd=project,
                            env={**(base or os.environ), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def probe(project: Path, *args: str, base: dict[str, str] | None = None, **env: str) -> tuple[int, dict, str]:
    process = start(project, *args, base=base, **env)
    out, err = process.communicate(timeout=60)
    return process.returncode, json.loads(out.splitlines()[0]), err


def test_a_stage_is_forked_warm_with_the_callers_argv_cwd_env_and_stdio(project: Path) -> None:
    code, seen, _ = probe(project, "a", "b c", PROBE_VALUE="42")
    assert code == 0
    assert seen["torch"], "torch was not imported already: the stage ran cold"
    assert seen["argv"] == ["a", "b c"] and seen["env"] == "42"
    assert seen["cwd"] == seen["path0"] == str(project)
    assert seen["tasks"] == str(project / "tasks" / "__init__.py")  # the project's own package
    assert not seen["float64"]


def test_a_sitecustomize_before_ours_runs_in_the_fork(project: Path) -> None:
    """The fault injections' sitecustomize (first on PYTHONPATH) installs them in the fork."""
    code, seen, err = probe(project, base=faults.subprocess_env(float64=True))
    assert code == 0 and seen["torch"] and seen["float64"], err


def test_exit_codes_and_errors_are_the_stages(project: Path) -> None:
    code, _, err = probe(project, "fail")
    assert code == 1 and "ValueError: probe failed" in err
    assert probe(project, "exit")[0] == 3


def test_a_signal_reaches_the_stage_and_a_killed_launcher_takes_its_stage_along(project: Path) -> None:
    for sent, expected in ((signal.SIGTERM, -signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        process = start(project, "sleep")
        stage = json.loads(process.stdout.readline())["pid"]
        process.send_signal(sent)
        assert process.wait(timeout=30) == expected
        deadline = time.monotonic() + 10
        while _alive(stage) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(stage), f"stage {stage} outlived its launcher ({sent.name})"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped, or being reaped as we read
        return False


def test_a_pythonpath_that_shadows_a_loaded_module_runs_cold(project: Path, tmp_path: Path) -> None:
    (tmp_path / "sklearn.py").write_text("")  # the server imported scikit-learn; the probe does not
    path = os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])
    code, seen, _ = probe(project, PYTHONPATH=path)
    assert code == 0 and not seen["torch"]
    code, seen, _ = probe(project, PYTHONPATH=os.pathsep.join([str(tmp_path / "other"), os.environ["PYTHONPATH"]]))
    assert code == 0 and seen["torch"]  # a folder that shadows nothing: still warm
