"""ingest end to end on real files: splits, dedupe, determinism, and errors that write nothing."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prefine.data.cache import CHUNK_MAX, CHUNK_MIN, _spans
from prefine.data.ingest import CACHE_NAME, dedupe, ingest
from prefine.data.sources import FASHION_CLASSES
from prefine.data import store
from prefine.data.store import read_split, read_split_manifest
from prefine.errors import PrefineError
from prefine.params import Params, parse

REPO = Path(__file__).resolve().parents[1]


def _params(per_class: int = 2, seed: int = 0, **ingest_params: object) -> Params:
    raw = {"seed": seed, "ingest": ingest_params, "finetune": {"labels_per_class": per_class}}
    return parse(raw)


def _run(params: Params, where: Path) -> dict[str, int]:
    return ingest(params, where / "data", where / "metrics" / "ingest.json")


def _files(where: Path) -> dict[str, bytes]:
    files = sorted(p for p in where.rglob("*") if p.is_file() and CACHE_NAME not in p.parts)
    return {p.relative_to(where).as_posix(): p.read_bytes() for p in files}


def _assert_nothing_written(where: Path) -> None:
    """No split and no metrics (the decode cache beside the splits may have what decoded well)."""
    written = [p.name for p in (where / "data").glob("*") if p.name != CACHE_NAME] if (where / "data").exists() else []
    assert written == [] and not (where / "metrics").exists()


def _pixels(name: str) -> np.ndarray:
    """Distinct 8x8 content per name."""
    return np.random.default_rng(zlib.crc32(name.encode())).integers(0, 256, (8, 8), dtype=np.uint8)


def _tree(root: Path, write_png, counts: dict[str, range]) -> None:
    for folder, numbers in counts.items():
        for i in numbers:
            write_png(root / folder / f"{i:04d}.png", _pixels(f"{folder}/{i}"))


def _shas(where: Path, split: str) -> set[str]:
    return set(read_split_manifest(where / "data" / split)["sha256"])


def test_fashion_mnist_slice(fmnist_slice, tmp_path):
    counts = _run(_params(5, source="fashion-mnist", path=str(fmnist_slice)), tmp_path)
    assert counts == {
        "unlabeled": 1200, "labeled": 50, "test": 300, "duplicates_within": 0,
        "duplicates_across": 0, "conflicting_labels": 0, "unlabeled_test_dropped": 0, "classes": 10,
    }  # fmt: skip
    pool = read_split(tmp_path / "data" / "unlabeled")
    labeled = read_split(tmp_path / "data" / "labeled")
    assert pool.images.shape == (1200, 1, 28, 28) and set(pool.labels.tolist()) == {-1}
    assert labeled.labels.bincount().tolist() == [5] * 10 and labeled.classes == FASHION_CLASSES
    manifests = {s: read_split_manifest(tmp_path / "data" / s) for s in ("unlabeled", "labeled", "test")}
    assert list(manifests["test"].columns) == ["id", "sha256", "label", "split", "source", "width", "height"]
    assert manifests["unlabeled"]["label"].isna().all()
    assert set(manifests["labeled"]["label"]) == set(FASHION_CLASSES)
    assert set(manifests["labeled"]["id"]) <= set(manifests["unlabeled"]["id"])
    assert not set(manifests["test"]["id"]) & set(manifests["unlabeled"]["id"])
    assert manifests["test"]["source"].str.startswith("t10k-images-idx3-ubyte.gz#").all()


def test_outputs_are_byte_identical_and_pool_ignores_budget(fmnist_slice, tmp_path):
    for name, per_class in (("a", 5), ("b", 5), ("c", 7)):
        _run(_params(per_class, source="fashion-mnist", path=str(fmnist_slice)), tmp_path / name)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    pool = {k: v for k, v in a.items() if k.startswith("data/unlabeled/")}
    assert pool and all(c[k] == v for k, v in pool.items())
    assert c["data/labeled/manifest.parquet"] != a["data/labeled/manifest.parquet"]


def test_split_and_selection_stable_when_images_added(tmp_path, write_png):
    root, first, second = tmp_path / "images", tmp_path / "first", tmp_path / "second"
    _tree(root, write_png, {"Bag": range(30), "Coat": range(30), "unlabeled": range(20)})
    params = _params(3, source="folder", path=str(root), image_size=8, test_fraction=0.3)
    counts = _run(params, first)
    assert counts["unlabeled_test_dropped"] > 0
    assert counts["unlabeled"] + counts["test"] + counts["unlabeled_test_dropped"] == 80

    _tree(root, write_png, {"Coat": range(30, 60), "unlabeled": range(20, 40)})
    _run(params, second)
    assert _shas(first, "unlabeled") < _shas(second, "unlabeled")
    assert _shas(first, "test") < _shas(second, "test")
    bags = [read_split_manifest(w / "data" / "labeled").query("label == 'Bag'") for w in (first, second)]
    assert bags[0]["id"].tolist() == bags[1]["id"].tolist() and len(bags[0]) == 3


def _shard_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("shard-*"))}


def test_a_second_ingest_decodes_only_the_added_images_and_appends_shards(tmp_path, write_png, capsys, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 1000)  # about 48 pool images of 72 bytes (8x8 gray, label): 4 shards
    root, pool = tmp_path / "images", tmp_path / "data" / "unlabeled"
    _tree(root, write_png, {"Bag": range(20), "Coat": range(20), "unlabeled": range(20)})
    params = _params(2, source="folder", path=str(root), image_size=8, workers=1)
    first = _run(params, tmp_path)
    before = _shard_files(pool)
    _tree(root, write_png, {"Coat": range(20, 23), "unlabeled": range(20, 25)})
    capsys.readouterr()
    second = _run(params, tmp_path)
    assert "decoding 8 of 68 images (60 unchanged, from the cache)" in capsys.readouterr().out
    after = _shard_files(pool)
    assert len(before) == 4 and {name: after[name] for name in before} == before  # bytes and mtimes
    assert sorted(set(after) - set(before)) == ["shard-00004.safetensors"]
    assert second["unlabeled"] > first["unlabeled"]
    _run(params, tmp_path / "fresh")  # the same images, ingested at once
    assert _shas(tmp_path, "unlabeled") == _shas(tmp_path / "fresh", "unlabeled")
    back = [read_split(where / "data" / "unlabeled") for where in (tmp_path, tmp_path / "fresh")]
    assert len(back[0]) == second["unlabeled"] and set(back[0].labels.tolist()) == {-1}
    assert sorted(map(bytes, back[0].images.numpy())) == sorted(map(bytes, back[1].images.numpy()))


def test_dedupe_counts(tmp_path, write_idx):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (20, 4, 4)), rng.integers(0, 256, (5, 4, 4))
    train_labels, test_labels = np.arange(20) % 10, np.arange(5)
    # a copy with the same label, a copy with another label, and a copy of a test image
    train = np.concatenate([train, train[[0, 1]], test[[0]]])
    train_labels = np.concatenate([train_labels, [0, 2], test_labels[[0]]])
    test, test_labels = np.concatenate([test, test[[1]]]), np.concatenate([test_labels, [1]])
    for prefix, images, labels in (("train", train, train_labels), ("t10k", test, test_labels)):
        write_idx(tmp_path / "idx" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(tmp_path / "idx" / f"{prefix}-labels-idx1-ubyte", labels)
    counts = _run(_params(1, source="fashion-mnist", path=str(tmp_path / "idx")), tmp_path)
    assert counts["duplicates_within"] == 3
    assert counts["duplicates_across"] == 1
    assert counts["conflicting_labels"] == 1
    assert (counts["unlabeled"], counts["labeled"], counts["test"]) == (20, 10, 5)


def test_dedupe_keeps_the_first_labeled_copy():
    table = pd.DataFrame(
        {
            "row": [0, 1, 2, 3],
            "sha": ["a", "a", "b", "a"],
            "label": [-1, 3, -1, 4],
            "split": ["train"] * 4,
        }
    )
    kept, counts = dedupe(table)
    assert kept["row"].tolist() == [1, 2]
    assert counts == {"duplicates_within": 2, "duplicates_across": 0, "conflicting_labels": 1}


# --- errors: one each; the message names what to fix and nothing is written ---------------


def test_truncated_idx_file(fmnist_slice, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(fmnist_slice, idx)
    file = idx / "train-images-idx3-ubyte.gz"
    file.write_bytes(gzip.compress(gzip.decompress(file.read_bytes())[:-100]))
    with pytest.raises(PrefineError) as error:
        _run(_params(source="fashion-mnist", path=str(idx)), tmp_path)
    assert f"{file}: truncated: header promises 1200 x 28 x 28 values" in str(error.value)
    assert "(940816 bytes with the header), found 940716 bytes" in str(error.value)
    _assert_nothing_written(tmp_path)


def test_corrupt_png(tmp_path, write_png):
    _tree(tmp_path / "images", write_png, {"Coat": range(3)})
    (tmp_path / "images" / "Coat" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(PrefineError, match=r"Coat/0001.png: not a readable image"):
        _run(_params(source="folder", path=str(tmp_path / "images"), image_size=8), tmp_path)
    _assert_nothing_written(tmp_path)


def _manifest_case(root: Path, write_png, rows: list[str]) -> Path:
    _tree(root, write_png, {"Coat": range(2), "Bag": range(2)})
    file = root / "m.csv"
    file.write_text("path,label\n" + "\n".join(rows) + "\n")
    return file


def test_label_outside_known_classes(tmp_path, write_png):
    rows = ["Coat/0000.png,Coat", "Bag/0000.png,Bag", "Bag/0001.png,Hat"]
    file = _manifest_case(tmp_path / "images", write_png, rows)
    params = _params(1, source="manifest", path=str(file), classes=["Coat", "Bag"], image_size=8)
    expected = r"m.csv: row 3 \(.*\): label 'Hat' is not one of ingest.classes \(Coat, Bag\)"
    with pytest.raises(PrefineError, match=expected):
        _run(params, tmp_path)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("row,expected", [
    ("../outside.png,Bag", r"m.csv: row 2 \(.*\): path '../outside.png' lies outside the data root"),
    ("Bag/gone.png,Bag", r"m.csv: row 2 \(.*\): image 'Bag/gone.png' not found under"),
])
def test_manifest_path_outside_the_root_or_missing_names_the_row(tmp_path, write_png, row, expected):
    write_png(tmp_path / "outside.png", _pixels("outside"))
    file = _manifest_case(tmp_path / "images", write_png, ["Coat/0000.png,Coat", row])
    with pytest.raises(PrefineError, match=expected):
        _run(_params(1, source="manifest", path=str(file), image_size=8), tmp_path)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "folders,found",
    [({"unlabeled": range(10)}, "0 class(es) with labeled images (no labels found)"),
     ({"Coat": range(5), "unlabeled": range(5)}, "1 class(es) with labeled images (Coat)")],
)  # fmt: skip
def test_fewer_than_two_classes(tmp_path, write_png, folders, found):
    root = tmp_path / "images"
    _tree(root, write_png, folders)
    with pytest.raises(PrefineError) as error:
        _run(_params(source="folder", path=str(root), image_size=8), tmp_path)
    assert str(error.value) == f"{root}: {found}; fine-tuning needs at least two"
    _assert_nothing_written(tmp_path)


def _labeled_manifest(root: Path, write_png, extra: str) -> Path:
    """Coat/0000-0009 and Bag/0000-0009 labeled by folder (Coat/0007 and Bag/0003 hash into
    test at test_fraction 0.2), plus one `extra` row."""
    _tree(root, write_png, {"Coat": range(10), "Bag": range(11)})
    rows = [f"{c}/{i:04d}.png,{c}" for c in ("Coat", "Bag") for i in range(10)]
    file = root / "m.csv"
    file.write_text("path,label\n" + "\n".join([*rows, extra]) + "\n")
    return file


def test_mistyped_label_is_named_by_its_file_not_blamed_on_the_budget(tmp_path, write_png):
    file = _labeled_manifest(tmp_path / "images", write_png, "Bag/0010.png,Bagg")  # a train image
    with pytest.raises(PrefineError) as error:
        _run(_params(2, source="manifest", path=str(file), image_size=8), tmp_path)
    assert str(error.value) == (
        "finetune.labels_per_class = 2 is more than the labeled training images of class "
        "'Bagg' (1: Bag/0010.png); lower finetune.labels_per_class, or fix or add labels"
    )
    _assert_nothing_written(tmp_path)


def test_class_with_no_training_image_is_named_with_its_images(tmp_path, write_png):
    file = _labeled_manifest(tmp_path / "images", write_png, "Bag/0003.png,Hat")  # a test image
    with pytest.raises(PrefineError) as error:
        _run(_params(1, source="manifest", path=str(file), image_size=8), tmp_path)
    assert str(error.value) == (
        f"{file}: class 'Hat' has no labeled training image: its labeled images (Bag/0003.png) "
        "all fell in the test split or copy one; fix the labels or add training images"
    )
    _assert_nothing_written(tmp_path)


def test_train_test_folders_are_a_predefined_split(tmp_path, write_png):
    root = tmp_path / "images"
    _tree(root, write_png, {"train/Coat": range(4), "train/Bag": range(4), "test/Coat": range(2),
                            "test/Bag": range(3), "unlabeled": range(5)})  # fmt: skip
    counts = _run(_params(2, source="folder", path=str(root), image_size=8), tmp_path)
    assert (counts["unlabeled"], counts["labeled"], counts["test"]) == (13, 4, 5)
    test = read_split_manifest(tmp_path / "data" / "test")
    assert sorted(test["source"]) == ["test/Bag/0000.png", "test/Bag/0001.png", "test/Bag/0002.png",
                                      "test/Coat/0000.png", "test/Coat/0001.png"]  # fmt: skip
    pool = read_split_manifest(tmp_path / "data" / "unlabeled")
    assert not pool["source"].str.startswith("test/").any()


def test_labels_per_class_above_what_exists(fmnist_slice, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _run(_params(5, source="fashion-mnist", path=str(fmnist_slice)), good)
    before = _files(good)
    expected = r"finetune.labels_per_class = 200 is more .* of class 'T-shirt/top' \(\d+\)"
    for where in (bad, good):
        with pytest.raises(PrefineError, match=expected):
            _run(_params(200, source="fashion-mnist", path=str(fmnist_slice)), where)
    _assert_nothing_written(bad)
    assert _files(good) == before  # a failed run leaves earlier outputs as they were


def test_stage_entry_point(fmnist_slice, tmp_path):
    def stage(path: Path) -> subprocess.CompletedProcess[str]:
        raw = {
            "ingest": {"source": "fashion-mnist", "path": str(path)},
            "finetune": {"labels_per_class": 5},
        }
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "tasks.ingest"]
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    failed = stage(tmp_path / "nowhere")
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("ingest: error: ")
    assert "nowhere" in failed.stderr
    _assert_nothing_written(tmp_path)

    done = stage(fmnist_slice)
    assert done.returncode == 0, done.stderr
    assert "labeled" in done.stdout and (tmp_path / "metrics" / "ingest.json").is_file()
    assert read_split(tmp_path / "data" / "test").images.shape == (300, 1, 28, 28)


@pytest.mark.parametrize(("count", "workers"), [(10_000, 2), (1000, 16), (100, 2), (5, 1), (0, 4)])
def test_decode_tasks_cover_every_file_once_and_shrink_towards_the_end(count, workers):
    """Guided scheduling: no core waits long on another's last task."""
    spans = _spans(count, workers)
    assert [i for start, end in spans for i in range(start, end)] == list(range(count))
    sizes = [end - start for start, end in spans]
    assert all(size <= CHUNK_MAX for size in sizes) and all(size >= CHUNK_MIN for size in sizes[:-1])
    assert all(a >= b for a, b in zip(sizes, sizes[1:-1]))  # large first; the last one is what is left
