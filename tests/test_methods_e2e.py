"""Every pretraining method through the stages on a tiny slice, in-process: pretrain ->
checkpoint -> finetune -> evaluate, on one shared ingest. The DAG itself (dvc repro, no-op
reruns, resuming after kill -9) is test_pipeline's job; this one is about the methods."""

from __future__ import annotations

import json
import math
from pathlib import Path

import faults
import pytest
import torch
import yaml
from PIL import Image

from prefine import paths
from prefine.data.ingest import ingest
from prefine.params import Params, apply_profile, load_profiles, parse
from tasks.checkpoint import checkpoint
from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.pretrain import train

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["autoencoder", "denoising", "simclr", "gan", "vicreg", "cluster"]


def pretrain(params: Params, state_file: Path = paths.PRETRAIN_STATE_FILE, plots: Path = paths.PRETRAIN_PLOTS_DIR) -> list[dict]:
    """What the pretrain stage runs (with its curves), to these paths."""
    return train(params, state_file, plots)


def tiny_params(source: Path, method: str = "simclr", epochs: int = 1) -> Params:
    """The repo's quick profile, smaller still: width 8, one epoch, 10 fine-tuning steps."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    apply_profile(raw, "quick", load_profiles(ROOT / "profiles.yaml"))
    params = parse(raw)
    return params.model_copy(update={
        "ingest": params.ingest.model_copy(update={"path": str(source)}),
        "pretrain": params.pretrain.model_copy(update={"method": method, "epochs": epochs, "width": 8}),
        "finetune": params.finetune.model_copy(update={"steps": 10}),
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory, fmnist_slice) -> Path:
    root = tmp_path_factory.mktemp("methods")
    ingest(tiny_params(fmnist_slice), out_dir=root / "data", metrics_file=root / "metrics/ingest.json")
    return root / "data"


@pytest.fixture
def project(data, tmp_path, monkeypatch) -> Path:
    """A fresh folder (not a git repo: DVCLive is fine with that) whose data/ is the shared ingest."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(data)
    return tmp_path


@pytest.mark.parametrize("method", METHODS)
def test_method_pretrains_an_encoder_that_fine_tunes_and_evaluates(method, project, fmnist_slice):
    params = tiny_params(fmnist_slice, method)
    history = pretrain(params)
    assert [r["epoch"] for r in history] == [1] and math.isfinite(history[0]["loss"])
    probe = checkpoint(params)
    finetune(params)
    metrics = evaluate(params)
    for out in ["models/encoder.safetensors", "models/encoder.card.json", "models/classifier.safetensors",
                "models/scratch.safetensors", "metrics/evaluate.json", "metrics/pretrain.json"]:
        assert Path(out).is_file(), out
    assert json.loads(Path("models/encoder.card.json").read_text())["pretraining"]["method"] == method
    assert 0.0 <= probe["knn_accuracy"] <= 1.0
    for name in ("pretrained", "scratch"):
        assert 0.0 <= metrics[name]["accuracy"] <= 1.0
    samples = paths.GAN_SAMPLES_FILE
    if method == "gan":
        assert {"d_loss", "g_loss", "d_real", "d_fake"} <= history[0].keys()
        assert (paths.PRETRAIN_PLOTS_DIR / "plots/metrics/g_loss.tsv").is_file()
        assert Image.open(samples).size == (8 * (28 + 2) + 2,) * 2  # 8 x 8 samples, 2-pixel padding
    else:
        assert not samples.exists()


def test_gan_resumed_after_a_crash_ends_as_an_uninterrupted_run(project, fmnist_slice, monkeypatch):
    """Both players and the logged parts come back from the per-epoch state, bit for bit."""
    params = tiny_params(fmnist_slice, "gan", epochs=2)
    reference_state = Path("reference/state.pt")
    reference = pretrain(params, state_file=reference_state, plots=Path("reference/plots"))
    faults.crash_once(monkeypatch, project / "failed-once")
    with pytest.raises(RuntimeError, match="injected failure"):
        pretrain(params)
    assert pretrain(params) == reference
    expected = torch.load(reference_state, weights_only=True)["model"]
    for key, value in torch.load(paths.PRETRAIN_STATE_FILE, weights_only=True)["model"].items():
        assert torch.equal(value, expected[key]), key


def test_cluster_does_not_resume_a_state_trained_toward_other_pseudo_classes(project, fmnist_slice, monkeypatch):
    """Same params and data, but the code makes other targets (as when the HOG replaced the pixels):
    the finished state of the old targets must not stand in for training on the new ones."""
    import prefine.training.pretraining as pretraining

    params = tiny_params(fmnist_slice, "cluster")
    pretrain(params)
    before = torch.load(paths.PRETRAIN_STATE_FILE, weights_only=True)
    assert pretrain(params) and torch.load(paths.PRETRAIN_STATE_FILE, weights_only=True)["fingerprint"] == before["fingerprint"]
    made = pretraining.hog_clusters
    monkeypatch.setattr(pretraining, "hog_clusters", lambda *a: (made(*a) + 1) % params.pretrain.clusters)
    pretrain(params)
    after = torch.load(paths.PRETRAIN_STATE_FILE, weights_only=True)
    assert after["fingerprint"] != before["fingerprint"]
    assert any(not torch.equal(value, before["model"][key]) for key, value in after["model"].items())


def test_propagate_learns_from_the_pool_through_the_finetune_stage(project, fmnist_slice, capsys):
    """The stage hands `propagate` the unlabeled split; the pretrained run and its scratch twin
    each propagate labels to the pool, once a round."""
    params = tiny_params(fmnist_slice, "cluster")
    params = params.model_copy(update={"finetune": params.finetune.model_copy(update={"strategy": "propagate",
                                                                                      "rounds": 2})})
    pretrain(params)
    checkpoint(params)
    finetune(params)
    log = capsys.readouterr().out
    assert log.count("round 1/2: labels propagated") == 2 and log.count("round 2/2: labels propagated") == 2
    metrics = evaluate(params)
    assert metrics["strategy"] == "propagate" and 0.0 <= metrics["pretrained"]["accuracy"] <= 1.0
