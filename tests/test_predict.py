"""`prefine predict` / `prefine embed` on a really trained, registered and pushed project.

One tiny project per module (width 8, one epoch, 10 fine-tuning steps on the Fashion-MNIST
slice): its stages run in-process, `dvc commit` records them in dvc.lock and the cache, the
registry (real git + GTO) versions the result and puts it in prod, and `dvc push` sends the
files to a local remote folder, so a fresh `git clone` can fetch classifier@prod again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from projects import dvc, git, make_project
from typer.testing import CliRunner

from flows.cli import app
from prefine import params as params_mod
from prefine import paths, registry
from prefine.data.ingest import ingest
from prefine.data.store import read_split
from prefine.evaluate import metrics
from prefine.evaluate.probe import embed
from prefine.models import weights
from prefine.params import RegistryParams
from prefine.training import device as devices
from tasks.checkpoint import checkpoint
from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.pretrain import train

pytestmark = pytest.mark.e2e

runner = CliRunner()
TINY = ["ingest.limit=null", "pretrain.epochs=1", "pretrain.width=8", "finetune.steps=10"]
SETTINGS = RegistryParams(commit=True, push=True, remote="prefine")


def _run_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, fmnist_slice: Path) -> Path:
    """Trained in-process, recorded by DVC, registered (v0.0.1 in prod), pushed to ../storage."""
    root = make_project(tmp_path_factory.mktemp("predict") / "project", fmnist_slice, TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        params = params_mod.load()
        ingest(params)
        train(params, paths.PRETRAIN_STATE_FILE)  # the pretrain stage's work, with its curves
        checkpoint(params)
        finetune(params)
        evaluate(params)
    _run_ok(dvc(root, "commit", "-f", "ingest", "pretrain", "checkpoint", "finetune", "evaluate"))
    assert registry.register(root, SETTINGS).promoted
    _run_ok(dvc(root, "remote", "add", "--local", SETTINGS.remote, str(root.parent / "storage")))
    _run_ok(dvc(root, "push", "-r", SETTINGS.remote))
    return root


def _predict(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["predict", *map(str, args)])
    return result.exit_code, result.output


def _test_predictions(project: Path) -> list[str]:
    """Class names that evaluate's own code (metrics.predict) gives data/test."""
    model, meta = weights.load_classifier(project / paths.CLASSIFIER_FILE)
    test = read_split(project / paths.TEST_DIR)
    return [meta["classes"][i] for i in metrics.predict(model, test.images, devices.pick()).tolist()]


def test_predict_on_the_test_split_reproduces_evaluate(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.parquet"
    code, output = _predict(project / paths.TEST_DIR, "--model", "classifier@v0.0.1", "--repo", project, "--out", out)
    assert code == 0, output
    rows = pq.read_table(out).to_pandas()
    test = read_split(project / paths.TEST_DIR)
    assert f"{len(test)} predicted, 0 failed" in output and len(rows) == len(test)
    assert rows["error"].isna().all() and rows["path"].str.startswith("t10k-images").all()
    assert rows["predicted"].tolist() == _test_predictions(project)
    names = np.array(test.classes)[test.labels.numpy()]
    accuracy = float((rows["predicted"].to_numpy() == names).mean())
    index = {name: i for i, name in enumerate(test.classes)}
    predicted = torch.tensor([index[name] for name in rows["predicted"]])
    assert accuracy == metrics.scores(test.labels, predicted, test.classes)["accuracy"]
    assert accuracy == registry.metrics_at(project, "HEAD")["pretrained"]["accuracy"]
    assert rows["top_k"].map(len).eq(3).all() and (rows["top_k"].str[0] == rows["predicted"]).all()
    assert np.allclose(rows["top_k_scores"].str[0], rows["confidence"])


@pytest.fixture
def folder(project: Path, tmp_path: Path) -> Path:
    """17 PNGs of the first test images (nested), 3 corrupt image files, and a note that is no image."""
    images = read_split(project / paths.TEST_DIR).images[:17, 0].numpy()
    root = tmp_path / "incoming"
    for i, pixels in enumerate(images):
        (root / f"batch{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / f"batch{i % 2}" / f"img{i:02d}.png")
    (root / "garbage.png").write_bytes(b"not a png at all")
    (root / "batch0" / "empty.jpg").write_bytes(b"")
    whole = (root / "batch1" / "img01.png").read_bytes()
    (root / "batch1" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image: skipped, not a failure")
    return root


def test_a_folder_with_corrupt_files_predicts_the_rest_and_exits_3(project: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.parquet"
    code, output = _predict(folder, "--model", project / paths.CLASSIFIER_FILE, "--out", out, "--batch-size", 8)
    assert code == 3, output
    assert "17 predicted, 3 failed" in output
    rows = pq.read_table(out).to_pandas()
    failed = rows[rows["error"].notna()]
    assert len(rows) == 20 and len(failed) == 3
    assert sorted(Path(p).name for p in failed["path"]) == ["empty.jpg", "garbage.png", "truncated.png"]
    assert all(Path(p).name in e for p, e in zip(failed["path"], failed["error"], strict=True))
    assert failed["predicted"].isna().all() and failed["top_k"].isna().all()
    good = rows[rows["error"].isna()].assign(n=lambda t: t["path"].str.extract(r"img(\d+)\.png")[0].astype(int))
    expected = _test_predictions(project)  # decoded from PNG as at ingest: the same predictions
    assert good.sort_values("n")["predicted"].tolist() == expected[:17]


def test_a_manifest_names_files_relative_to_itself(project: Path, folder: Path, tmp_path: Path) -> None:
    manifest = folder / "list.csv"
    manifest.write_text("path,note\nbatch0/img00.png,a\nmissing.png,b\n,c\n")
    out = tmp_path / "preds.parquet"
    code, output = _predict(manifest, "--model", project / paths.CLASSIFIER_FILE, "--out", out)
    assert code == 3 and "1 predicted, 2 failed" in output, output
    rows = pq.read_table(out).to_pandas()
    assert rows["predicted"].tolist()[0] == _test_predictions(project)[0]
    assert "missing.png" in rows["error"][1] and "row 3" in rows["error"][2]


def test_embed_writes_the_prod_encoders_embeddings(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "embeddings.parquet"
    result = runner.invoke(app, ["embed", str(project / paths.TEST_DIR), "--repo", str(project), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("embedding").type.equals(pa.list_(pa.float32()))
    encoder, _ = weights.load_encoder(project / paths.ENCODER_FILE)
    expected = embed(encoder, read_split(project / paths.TEST_DIR).images, devices.pick())
    assert np.allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), expected.numpy())


def test_bad_model_and_source_are_one_line_errors(project: Path, tmp_path: Path) -> None:
    code, output = _predict(tmp_path / "nowhere", "--model", project / paths.CLASSIFIER_FILE, "--out", tmp_path / "p.parquet")
    assert code == 2 and "nowhere: no such file or folder" in output
    code, output = _predict(project / paths.TEST_DIR, "--model", project / paths.ENCODER_FILE, "--out", tmp_path / "p.parquet")
    assert code == 2 and "not a classifier's weights" in output
    code, output = _predict(project / paths.TEST_DIR, "--model", "classifier@v9", "--repo", project, "--out", tmp_path / "p.parquet")
    assert code == 1 and "no version v9 of classifier" in output
    assert not (tmp_path / "p.parquet").exists()


def test_prod_in_a_fresh_clone_is_fetched_from_the_remote(project: Path, folder: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not (clone / paths.CLASSIFIER_FILE).exists()  # DVC's, not git's: only the remote has it
    out = tmp_path / "preds.parquet"
    code, output = _predict(folder / "batch0", "--repo", clone, "--out", out)
    assert code == 3 and "9 predicted, 1 failed" in output, output
    expected = {f"img{i:02d}.png": name for i, name in enumerate(_test_predictions(project))}
    rows = pq.read_table(out).to_pandas().dropna(subset=["predicted"])
    assert [expected[Path(p).name] for p in rows["path"]] == rows["predicted"].tolist()
    assert not (clone / paths.CLASSIFIER_FILE).exists()  # fetched aside, the checkout untouched
