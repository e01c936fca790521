"""Readers on small real files: IDX, ImageFolder and CSV/Parquet manifests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from prefine.data.sources import FASHION_CLASSES, read_folder, read_idx, read_manifest
from prefine.errors import PrefineError


def _pixels(k: int, size: int = 8) -> np.ndarray:
    """Distinct content per k."""
    return np.random.default_rng(k).integers(0, 256, (size, size), dtype=np.uint8)


def _tiny_idx(folder, write_idx, train_labels=(0, 1, 2, 3, 9), test_labels=(4, 5, 6)):
    rng = np.random.default_rng(0)
    for prefix, labels, suffix in (("train", train_labels, ".gz"), ("t10k", test_labels, "")):
        images = rng.integers(0, 256, (len(labels), 4, 4))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.array(labels))


def test_read_idx_keeps_official_split_and_limit(tmp_path, write_idx):
    _tiny_idx(tmp_path, write_idx)
    source = read_idx(tmp_path, limit=4)
    assert source.images.shape == (7, 1, 4, 4) and source.images.dtype == torch.uint8
    assert source.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert source.split == ["train"] * 4 + ["test"] * 3
    assert source.origin[3] == "train-images-idx3-ubyte.gz#3"
    assert source.origin[4] == "t10k-images-idx3-ubyte#0"
    assert source.classes == FASHION_CLASSES


def test_read_idx_real_slice(fmnist_slice):
    source = read_idx(fmnist_slice)
    assert source.images.shape == (1500, 1, 28, 28)
    assert source.split.count("test") == 300
    assert set(source.labels.tolist()) == set(range(10))


def test_read_idx_errors_name_the_file(tmp_path, write_idx):
    _tiny_idx(tmp_path, write_idx, test_labels=(4, 10, 6))
    with pytest.raises(PrefineError, match=r"t10k-labels-idx1-ubyte: label 10 at index 1"):
        read_idx(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((3, 1, 1)))  # wrong dims -> magic
    with pytest.raises(PrefineError, match=r"t10k-labels-idx1-ubyte: magic number 0x00000803"):
        read_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(PrefineError, match=r"t10k-labels-idx1-ubyte: missing"):
        read_idx(tmp_path)


def test_read_idx_rejects_trailing_bytes(tmp_path, write_idx):
    _tiny_idx(tmp_path, write_idx)
    with (tmp_path / "t10k-labels-idx1-ubyte").open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(PrefineError, match=r"t10k-labels-idx1-ubyte: has trailing bytes.*11 bytes"):
        read_idx(tmp_path)


def test_read_folder(tmp_path, write_png):
    write_png(tmp_path / "Coat" / "b.png", _pixels(1))
    write_png(tmp_path / "Coat" / "a.png", _pixels(2))
    write_png(tmp_path / "Bag" / "x.jpg", np.stack([_pixels(3, 16)] * 3, axis=-1))  # RGB, 16px
    write_png(tmp_path / "unlabeled" / "u.png", _pixels(4))
    (tmp_path / "Coat" / "notes.txt").write_text("ignored")
    source = read_folder(tmp_path, image_size=8, channels=1)
    assert source.classes == ["Bag", "Coat"]
    assert source.origin == ["Bag/x.jpg", "Coat/a.png", "Coat/b.png", "unlabeled/u.png"]
    assert source.labels.tolist() == [0, 1, 1, -1]
    assert source.split == [None] * 4
    assert source.images.shape == (4, 1, 8, 8)
    assert torch.equal(source.images[1, 0], torch.from_numpy(_pixels(2)))  # PNG is exact

    rgb = read_folder(tmp_path, classes=["Coat", "Bag", "Dress"], image_size=8, channels=3, limit=1)
    assert rgb.classes == ["Coat", "Bag", "Dress"]
    assert rgb.origin == ["Bag/x.jpg", "Coat/a.png", "unlabeled/u.png"]
    assert rgb.labels.tolist() == [1, 0, -1]
    assert rgb.images.shape == (3, 3, 8, 8)


def test_read_folder_rejects_unknown_class_folder(tmp_path, write_png):
    write_png(tmp_path / "Coat" / "a.png", _pixels(1))
    write_png(tmp_path / "Hat" / "a.png", _pixels(2))
    expected = r"Hat: folder 'Hat' is not one of ingest.classes \(Coat, Bag\)"
    with pytest.raises(PrefineError, match=expected):
        read_folder(tmp_path, classes=["Coat", "Bag"])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_read_manifest(tmp_path, write_png, suffix):
    for k, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        write_png(tmp_path / "img" / name, _pixels(k))
    table = pd.DataFrame({"path": ["b.png", "sub/c.png", "a.png"], "label": ["Coat", None, "Bag"]})
    file = tmp_path / f"list{suffix}"
    table.to_csv(file, index=False) if suffix == ".csv" else table.to_parquet(file)
    source = read_manifest(file, root=tmp_path / "img", image_size=8)
    assert source.classes == ["Bag", "Coat"]
    assert source.labels.tolist() == [1, -1, 0]
    assert source.origin == ["b.png", "sub/c.png", "a.png"]
    assert torch.equal(source.images[2, 0], torch.from_numpy(_pixels(0)))
    head = read_manifest(file, root=tmp_path / "img", image_size=8, limit=2)
    assert head.classes == ["Coat"] and head.labels.tolist() == [0, -1]


def test_read_manifest_int_labels_with_gaps(tmp_path, write_png):
    write_png(tmp_path / "a.png", _pixels(0))
    write_png(tmp_path / "b.png", _pixels(1))
    table = pd.DataFrame({"path": ["a.png", "b.png"], "label": [3, None]})
    table.to_parquet(tmp_path / "m.parquet")
    source = read_manifest(tmp_path / "m.parquet", image_size=8)
    assert source.classes == ["3"] and source.labels.tolist() == [0, -1]


def test_read_manifest_missing_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: no 'path' column \(columns: file, label\)"):
        read_manifest(tmp_path / "m.csv")


def test_read_manifest_refuses_symlink_escape(tmp_path, write_png):
    write_png(tmp_path / "outside.png", _pixels(0))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "root" / "m.csv").write_text("path,label\nlink.png,Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: row 1 .*'link.png' lies outside the data root"):
        read_manifest(tmp_path / "root" / "m.csv")


def test_read_manifest_refuses_absolute_path_elsewhere(tmp_path, write_png):
    write_png(tmp_path / "outside.png", _pixels(0))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "m.csv").write_text(f"path,label\n{tmp_path / 'outside.png'},Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: row 1 .*outside.png' lies outside the data"):
        read_manifest(tmp_path / "root" / "m.csv")


def test_corrupt_image_in_manifest_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "m.csv").write_text("path,label\nbad.png,Coat\n")
    with pytest.raises(PrefineError, match=r"bad.png: not a readable image"):
        read_manifest(tmp_path / "m.csv")
