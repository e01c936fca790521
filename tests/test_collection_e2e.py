"""A user's folder of photos (mixed sizes and kinds: RGB JPEG, CMYK JPEG, 16-bit PNG, RGBA PNG,
EXIF-rotated JPEG, grayscale PNG) through every stage with a resnet18 under the quick profile,
in-process; and a second ingest after adding images decodes only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from prefine import paths
from prefine.data.ingest import ingest
from prefine.data.store import read_split, read_split_manifest
from prefine.params import Params, apply_profile, load_profiles, parse
from prefine.training.pretraining import pretrain
from tasks.checkpoint import checkpoint
from tasks.evaluate import evaluate
from tasks.finetune import finetune

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("rgb", "cmyk", "png16", "rgba", "rotated", "gray")


def photo(path: Path, kind: str, seed: int, bright: bool) -> None:
    """A picture of `kind`, 40-120 px a side; its class is in its brightness."""
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(40, 121, 2))
    base = rng.integers(150, 256) if bright else rng.integers(0, 100)
    rgb = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"), quality=90)
    elif kind == "png16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path.with_suffix(".png"))
    elif kind == "rgba":
        alpha = np.full((h, w, 1), 200, np.uint8)
        Image.fromarray(np.concatenate([rgb, alpha], -1)).save(path.with_suffix(".png"))
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(rgb).save(path.with_suffix(".jpg"), quality=90, exif=exif)
    elif kind == "gray":
        Image.fromarray(rgb[..., 0]).save(path.with_suffix(".png"))
    else:
        Image.fromarray(rgb).save(path.with_suffix(".jpg"), quality=90)


def photos(root: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        folder = "unlabeled" if i % 5 == 4 else ("light" if i % 2 else "dark")
        photo(root / folder / f"{i:04d}", KINDS[i % len(KINDS)], i, bright=i % 2 == 1)


def params_for(source: Path) -> Params:
    """The quick profile, with a resnet18 at 32 px in colour on `source`."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    apply_profile(raw, "quick", load_profiles(ROOT / "profiles.yaml"))
    raw["ingest"].update(source="folder", path=str(source), image_size=32, channels=3)
    raw["pretrain"].update(encoder="resnet18", epochs=1, batch_size=16, save_every=1)
    raw["finetune"].update(labels_per_class=8, steps=6, batch_size=8)
    return parse(raw)


def test_a_folder_of_mixed_photos_runs_end_to_end_with_resnet18(tmp_path, monkeypatch, capsys):
    photos(tmp_path / "photos", 0, 60)
    monkeypatch.chdir(tmp_path)
    params = params_for(tmp_path / "photos")
    counts = ingest(params)
    assert counts["classes"] == 2 and counts["unlabeled"] + counts["test"] + counts["unlabeled_test_dropped"] == 60
    pool = read_split(paths.UNLABELED_DIR)
    assert pool.images.shape[1:] == (3, 32, 32)
    manifest = read_split_manifest(paths.UNLABELED_DIR)
    assert (manifest["width"] >= 40).all() and (manifest["height"] <= 120).all()

    history = pretrain(params, paths.UNLABELED_DIR, paths.PRETRAIN_STATE_FILE, paths.PRETRAIN_PLOTS_DIR)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert checkpoint(params)["embedding_dim"] == 512
    finetune(params)
    metrics = evaluate(params)
    assert 0.0 <= metrics["pretrained"]["accuracy"] <= 1.0
    assert json.loads(paths.ENCODER_CARD_FILE.read_text())["spec"]["kind"] == "resnet18"

    photos(tmp_path / "photos", 60, 5)
    capsys.readouterr()
    ingest(params)
    assert "decoding 5 of 65 images (60 unchanged, from the cache)" in capsys.readouterr().out


def test_dvc_repro_after_adding_images_appends_shards_and_pushes_only_those(tmp_path):
    """Under `dvc repro` (ingest's splits are `persist: true`), images added to the folder go to
    new shards: every shard of the pool and the test split keeps its bytes and mtime, and the
    second `dvc push` moves only what is new."""
    from flows.dvc import refresh_inputs
    from projects import dvc, make_project

    photos(tmp_path / "photos", 0, 60)
    project = make_project(tmp_path / "project", tmp_path / "photos", [
        "ingest.source=folder", "ingest.image_size=32", "ingest.channels=3", "finetune.labels_per_class=8"])
    assert dvc(project, "remote", "add", "-d", "local", str(tmp_path / "remote")).returncode == 0

    def repro_and_push() -> int:
        refresh_inputs(project)  # as `prefine run` does: DVC sees the folder changed
        repro = dvc(project, "repro", "ingest")
        assert repro.returncode == 0, repro.stdout + repro.stderr
        push = dvc(project, "push")
        assert push.returncode == 0, push.stderr
        return int(re.search(r"(\d+) files? pushed", push.stdout).group(1))

    first = repro_and_push()
    kept = {f: (f.read_bytes(), f.stat().st_mtime_ns) for split in ("unlabeled", "test")
            for f in (project / "data" / split).glob("shard-*.safetensors")}
    photos(tmp_path / "photos", 60, 10)
    second = repro_and_push()
    for f, (data, mtime) in kept.items():
        assert f.read_bytes() == data and f.stat().st_mtime_ns == mtime, f
    grown = {f for split in ("unlabeled", "test") for f in (project / "data" / split).glob("shard-*.safetensors")}
    assert grown > set(kept)  # new shards beside the old ones
    assert second < first, (first, second)
