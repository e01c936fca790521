"""Data-parallel training on the CPU: torchrun with gloo, two processes standing in for two GPUs.

The training stages run as a user runs them (`python -m tasks.pretrain` in a project, with
`resources.devices` in params.yaml), on a tiny Fashion-MNIST slice. Runs that compare one
process with two use float64 (tests/faults.py), so the only differences left are summation order.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import faults
import pytest
import torch
import yaml
from projects import dvc, make_project
from safetensors.torch import load_file

from flows.overrides import apply
from prefine import paths

pytestmark = pytest.mark.e2e

TINY = ["ingest.limit=600", "pretrain.width=4", "pretrain.epochs=2", "pretrain.batch_size=64", "pretrain.workers=0",
        "pretrain.save_every=4", "pretrain.expander=32", "finetune.steps=8", "finetune.labels_per_class=10",
        "finetune.batch_size=32"]
DDP = ["resources.devices=2"]


@pytest.fixture(scope="module")
def ingested(fmnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_project(tmp_path_factory.mktemp("ddp") / "base", fmnist_slice, TINY)
    result = dvc(project, "repro", "ingest")
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="module")
def shared(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list[str]], tuple[Path, str]]:
    """run_stage on `ingested`, each (stage, overrides) run once for the module: a run that
    several tests compare with (two-device SimCLR, a checkpointed encoder) is not repeated."""
    done: dict[tuple[str, ...], tuple[Path, str]] = {}
    base = tmp_path_factory.mktemp("shared")

    def run(stage: str, overrides: list[str]) -> tuple[Path, str]:
        key = (stage, *overrides)
        if key not in done:
            done[key] = run_stage(ingested, base / f"run-{len(done)}", stage, overrides)
        return done[key]

    return run


def run_stage(base: Path, dest: Path, stage: str, overrides: list[str], **instruments) -> tuple[Path, str]:
    """A copy of `base` with `overrides` applied, where `python -m tasks.<stage>` ran; its output."""
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns(".git"))
    apply(dest, None, overrides)
    env = faults.subprocess_env(float64=True, **instruments)
    result = subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=dest, env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return dest, output


def pretrained(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / paths.PRETRAIN_STATE_FILE, weights_only=True)["model"]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("method", ["simclr", "vicreg", "gan"])
def test_two_processes_pretrain_what_one_does(ingested: Path, shared, tmp_path: Path, method: str) -> None:
    one, _ = run_stage(ingested, tmp_path / "one", "pretrain", [f"pretrain.method={method}"])
    two, log = shared("pretrain", [f"pretrain.method={method}", *DDP])
    assert "2 processes per host" in log and "rank 1 of 2" in log
    assert pretrained(one)["encoder.blocks.0.0.weight"].dtype == torch.float64
    assert_same(pretrained(one), pretrained(two))
    curves = [torch.load(p / paths.PRETRAIN_STATE_FILE, weights_only=True)["history"] for p in (one, two)]
    assert [r["images"] for r in curves[0]] == [r["images"] for r in curves[1]]  # the same global batches
    torch.testing.assert_close([r["loss"] for r in curves[0]], [r["loss"] for r in curves[1]])


def test_data_parallel_runs_are_bit_identical_and_survive_a_killed_rank(ingested: Path, shared, tmp_path: Path) -> None:
    """Two identical DDP runs agree bit for bit; killing rank 1 right after a mid-epoch save makes
    torchrun restart the group, which resumes from that save and ends with the same weights."""
    ddp = ["pretrain.method=simclr", *DDP]
    first, _ = shared("pretrain", ddp)
    second, _ = run_stage(ingested, tmp_path / "second", "pretrain", ddp)
    assert_same(pretrained(first), pretrained(second), exact=True)

    marker = tmp_path / "killed"
    killed, log = run_stage(ingested, tmp_path / "killed-run", "pretrain", ddp, kill_rank=marker)
    assert marker.exists() and "resuming at epoch 1, batch 4" in log, log[-3000:]
    assert_same(pretrained(first), pretrained(killed), exact=True)


@pytest.fixture(scope="module")
def checkpointed(shared) -> Path:
    """An encoder pretrained for an epoch and checkpointed: what the fine-tuning tests start from."""
    base, _ = shared("pretrain", ["pretrain.epochs=1"])
    subprocess.run([sys.executable, "-m", "tasks.checkpoint"], cwd=base, env=faults.subprocess_env(float64=True),
                   check=True, capture_output=True)
    return base


@pytest.mark.parametrize("strategy", ["full", "semisup"])
def test_two_processes_fine_tune_what_one_does(checkpointed: Path, tmp_path: Path, strategy: str) -> None:
    one, _ = run_stage(checkpointed, tmp_path / "one", "finetune", [f"finetune.strategy={strategy}"])
    two, log = run_stage(checkpointed, tmp_path / "two", "finetune", [f"finetune.strategy={strategy}", *DDP])
    assert "2 processes per host" in log
    for name in (paths.CLASSIFIER_FILE, paths.SCRATCH_FILE):
        assert_same(load_file(one / name), load_file(two / name))


def test_a_batch_too_small_to_share_is_a_clear_error_before_any_rank_starts(ingested: Path, tmp_path: Path) -> None:
    dest = tmp_path / "project"
    shutil.copytree(ingested, dest, ignore=shutil.ignore_patterns(".git"))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["resources"] = {"devices": 3}
    params["pretrain"]["batch_size"] = 2
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "tasks.pretrain"], cwd=dest, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1 and "torchrun" not in result.stdout
    assert result.stderr.strip() == ("pretrain: error: params.yaml: pretrain.batch_size 2 cannot be shared by 3 "
                                     "devices (resources.devices x resources.nodes): raise it or use fewer devices")
    assert not (dest / paths.PRETRAIN_STATE_FILE).exists()


def test_dvc_repro_with_two_devices_end_to_end(fmnist_slice: Path, tmp_path: Path) -> None:
    """The whole pipeline with resources.devices: 2 (gloo): every output of dvc.yaml is made, and
    the metrics have the keys a one-device run writes."""
    project = make_project(tmp_path / "project", fmnist_slice, [*TINY, "resources.devices=2"])
    result = dvc(project, "repro")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("processes per host") == 2  # pretrain and finetune ran under torchrun
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert outs and all((project / out).exists() for out in outs)
    metrics = json.loads((project / paths.EVALUATE_METRICS_FILE).read_text())
    assert {"pretrained", "scratch"} <= set(metrics)
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout
