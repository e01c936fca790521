"""Readers on small real files: IDX, ImageFolder and CSV/Parquet manifests."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from prefine.data.sources import (
    FASHION_CLASSES,
    FOLDER_LAYOUTS,
    Decoding,
    read_folder,
    read_idx,
    read_manifest,
)
from prefine.data.store import gather
from prefine.errors import PrefineError

ROW_1 = "row 1 (data rows counted from 1, header excluded)"


def _pixels(k: int, size: int = 8) -> np.ndarray:
    """Distinct content per k."""
    return np.random.default_rng(k).integers(0, 256, (size, size), dtype=np.uint8)


@pytest.fixture
def gray8(tmp_path_factory) -> Decoding:
    """Decode to 8 x 8 gray, into a cache of the test's own."""
    return Decoding(8, 1, tmp_path_factory.mktemp("cache"))


def _image(source, k: int) -> torch.Tensor:
    return gather(source.images, [k])[0]


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


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_read_idx_refuses_a_header_promising_too_much(tmp_path, write_idx):
    _tiny_idx(tmp_path, write_idx)
    file = tmp_path / "train-images-idx3-ubyte.gz"
    file.write_bytes(gzip.compress(_idx_header(2**21, 32, 32) + bytes(16)))  # claims 2 GiB
    with pytest.raises(PrefineError) as error:
        read_idx(tmp_path)
    assert str(error.value) == (
        f"{file}: header promises 2097152 x 32 x 32 values (2147483648 bytes), "
        "over the 268435456-byte limit; refused unread"
    )


def test_read_idx_inflates_no_more_than_its_header_promises(tmp_path, write_idx):
    _tiny_idx(tmp_path, write_idx)
    file = tmp_path / "train-images-idx3-ubyte.gz"
    squeeze = zlib.compressobj(wbits=31)  # gzip framing
    with file.open("wb") as out:
        out.write(squeeze.compress(_idx_header(5, 4, 4)))
        for _ in range(32):  # 32 MiB of zeros after the 80 bytes the header promises
            out.write(squeeze.compress(bytes(2**20)))
        out.write(squeeze.flush())
    assert file.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(PrefineError) as error:
            read_idx(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == (
        f"{file}: has trailing bytes: header promises 5 x 4 x 4 values "
        "(96 bytes with the header), found more"
    )
    assert peak < 2**20  # inflating it all would take 32 MiB


def test_read_folder(tmp_path, write_png, gray8):
    write_png(tmp_path / "Coat" / "b.png", _pixels(1))
    write_png(tmp_path / "Coat" / "a.png", _pixels(2))
    write_png(tmp_path / "Bag" / "x.jpg", np.stack([_pixels(3, 16)] * 3, axis=-1))  # RGB, 16px
    write_png(tmp_path / "unlabeled" / "u.png", _pixels(4))
    (tmp_path / "Coat" / "notes.txt").write_text("ignored")
    (tmp_path / "Coat" / "._a.png").write_bytes(b"\0\5\x16\7")  # macOS metadata: skipped
    source = read_folder(tmp_path, gray8)
    assert source.classes == ["Bag", "Coat"]
    assert source.origin == ["Bag/x.jpg", "Coat/a.png", "Coat/b.png", "unlabeled/u.png"]
    assert source.labels.tolist() == [0, 1, 1, -1]
    assert source.split == [None] * 4
    assert source.images.shape == (4, 1, 8, 8)
    assert torch.equal(_image(source, 1)[0], torch.from_numpy(_pixels(2)))  # PNG is exact

    rgb = read_folder(tmp_path, Decoding(8, 3, gray8.cache), classes=["Coat", "Bag", "Dress"], limit=1)
    assert rgb.classes == ["Coat", "Bag", "Dress"]
    assert rgb.origin == ["Bag/x.jpg", "Coat/a.png", "unlabeled/u.png"]
    assert rgb.labels.tolist() == [1, 0, -1]
    assert rgb.images.shape == (3, 3, 8, 8)


def test_read_folder_rejects_unknown_class_folder(tmp_path, write_png, gray8):
    write_png(tmp_path / "Coat" / "a.png", _pixels(1))
    write_png(tmp_path / "Hat" / "a.png", _pixels(2))
    expected = r"Hat: folder 'Hat' is not one of ingest.classes \(Coat, Bag\)"
    with pytest.raises(PrefineError, match=expected):
        read_folder(tmp_path, gray8, classes=["Coat", "Bag"])


def test_read_folder_reads_every_format_pillow_reads(tmp_path, gray8):
    formats = {"Bag": ".webp", "Coat": ".bmp", "Dress": ".tif", "Hat": ".gif"}
    for k, (name, suffix) in enumerate(formats.items()):
        (tmp_path / name).mkdir()
        Image.fromarray(_pixels(k)).save(tmp_path / name / f"a{suffix}", lossless=True)
    source = read_folder(tmp_path, gray8)
    assert source.classes == list(formats)
    assert source.origin == [f"{name}/a{suffix}" for name, suffix in formats.items()]
    for k in range(len(formats)):
        assert torch.equal(_image(source, k)[0], torch.from_numpy(_pixels(k)))


def test_read_folder_train_test_layout_pins_the_split(tmp_path, write_png, gray8):
    for k, name in enumerate(["train/Coat/a", "train/Bag/a", "train/unlabeled/v", "test/Coat/b",
                              "test/Bag/b", "unlabeled/u"]):  # fmt: skip
        write_png(tmp_path / f"{name}.png", _pixels(k))
    source = read_folder(tmp_path, gray8)
    assert source.classes == ["Bag", "Coat"]
    assert source.origin == [
        "train/Bag/a.png", "train/Coat/a.png", "train/unlabeled/v.png",
        "test/Bag/b.png", "test/Coat/b.png", "unlabeled/u.png",
    ]  # fmt: skip
    assert source.labels.tolist() == [0, 1, -1, 0, 1, -1]
    assert source.split == ["train", "train", "train", "test", "test", "train"]


def _layout_message(folder, problem: str) -> str:
    return f"{folder}: {problem}; source 'folder' expects {FOLDER_LAYOUTS}"


def test_read_folder_names_a_folder_without_images_and_what_it_holds(tmp_path, write_png, gray8):
    write_png(tmp_path / "Coat" / "a.png", _pixels(1))
    (tmp_path / "Hat").mkdir()
    (tmp_path / "Hat" / "a.heic").write_bytes(b"")
    (tmp_path / "Hat" / "notes.txt").write_text("")
    with pytest.raises(PrefineError) as error:
        read_folder(tmp_path, gray8)
    assert str(error.value) == _layout_message(
        tmp_path / "Hat", "no image files (it holds a.heic, notes.txt)"
    )


def test_read_folder_names_what_it_found_instead_of_a_layout(tmp_path, write_png, gray8):
    for split in ("train", "val"):  # val/ is not test/: read as a flat tree
        write_png(tmp_path / split / "Bag" / "a.png", _pixels(0))
    with pytest.raises(PrefineError) as error:
        read_folder(tmp_path, gray8)
    assert str(error.value) == _layout_message(tmp_path / "train", "no image files (it holds Bag/)")

    loose = tmp_path / "loose"
    for k in range(7):
        write_png(loose / f"{k}.png", _pixels(k))
    with pytest.raises(PrefineError) as error:
        read_folder(loose, gray8)
    expected = "no class folders (it holds 0.png, 1.png, 2.png, 3.png, 4.png and 2 more)"
    assert str(error.value) == _layout_message(loose, expected)

    (tmp_path / "empty").mkdir()
    with pytest.raises(PrefineError) as error:
        read_folder(tmp_path / "empty", gray8)
    assert str(error.value) == _layout_message(tmp_path / "empty", "no class folders (it is empty)")


def test_read_folder_train_test_layout_needs_class_folders_in_test(tmp_path, write_png, gray8):
    write_png(tmp_path / "train" / "Bag" / "a.png", _pixels(0))
    write_png(tmp_path / "test" / "a.png", _pixels(1))
    with pytest.raises(PrefineError) as error:
        read_folder(tmp_path, gray8)
    assert str(error.value) == _layout_message(tmp_path / "test", "no class folders (it holds a.png)")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_read_manifest(tmp_path, write_png, suffix, gray8):
    for k, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        write_png(tmp_path / "img" / name, _pixels(k))
    table = pd.DataFrame({"path": ["b.png", "sub/c.png", "a.png"], "label": ["Coat", None, "Bag"]})
    file = tmp_path / f"list{suffix}"
    table.to_csv(file, index=False) if suffix == ".csv" else table.to_parquet(file)
    source = read_manifest(file, gray8, root=tmp_path / "img")
    assert source.classes == ["Bag", "Coat"]
    assert source.labels.tolist() == [1, -1, 0]
    assert source.origin == ["b.png", "sub/c.png", "a.png"]
    assert torch.equal(_image(source, 2)[0], torch.from_numpy(_pixels(0)))
    head = read_manifest(file, gray8, root=tmp_path / "img", limit=2)
    assert head.classes == ["Coat"] and head.labels.tolist() == [0, -1]


def test_read_manifest_int_labels_with_gaps(tmp_path, write_png, gray8):
    write_png(tmp_path / "a.png", _pixels(0))
    write_png(tmp_path / "b.png", _pixels(1))
    table = pd.DataFrame({"path": ["a.png", "b.png"], "label": [3, None]})
    table.to_parquet(tmp_path / "m.parquet")
    source = read_manifest(tmp_path / "m.parquet", gray8)
    assert source.classes == ["3"] and source.labels.tolist() == [0, -1]


def test_read_manifest_missing_column(tmp_path, gray8):
    (tmp_path / "m.csv").write_text("file,label\na.png,Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: no 'path' column \(columns: file, label\)"):
        read_manifest(tmp_path / "m.csv", gray8)


def test_read_manifest_refuses_symlink_escape(tmp_path, write_png, gray8):
    write_png(tmp_path / "outside.png", _pixels(0))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "root" / "m.csv").write_text("path,label\nlink.png,Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: row 1 .*'link.png' lies outside the data root"):
        read_manifest(tmp_path / "root" / "m.csv", gray8)


def test_read_manifest_refuses_absolute_path_elsewhere(tmp_path, write_png, gray8):
    write_png(tmp_path / "outside.png", _pixels(0))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "m.csv").write_text(f"path,label\n{tmp_path / 'outside.png'},Coat\n")
    with pytest.raises(PrefineError, match=r"m.csv: row 1 .*outside.png' lies outside the data"):
        read_manifest(tmp_path / "root" / "m.csv", gray8)


def test_corrupt_image_in_manifest_names_the_file(tmp_path, gray8):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "m.csv").write_text("path,label\nbad.png,Coat\n")
    with pytest.raises(PrefineError, match=r"bad.png: not a readable image"):
        read_manifest(tmp_path / "m.csv", gray8)


@pytest.mark.parametrize(
    "label,message",
    [
        (["Coat"], "label array(['Coat'], dtype=object) has type ndarray"),
        ({"name": "Coat"}, "label {'name': 'Coat'} has type dict"),
    ],
)
def test_manifest_label_that_is_not_a_scalar(tmp_path, write_png, label, message, gray8):
    write_png(tmp_path / "a.png", _pixels(0))
    pd.DataFrame({"path": ["a.png"], "label": [label]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(PrefineError) as error:
        read_manifest(tmp_path / "m.parquet", gray8)
    expected = f"{tmp_path / 'm.parquet'}: {ROW_1}: {message}; a label is text or a number"
    assert str(error.value) == expected


@pytest.mark.parametrize(
    "path,problem",
    [
        ("a\0.png", "holds a NUL byte"),
        ("x" * 300 + ".png", "is longer than the OS allows for a file name or path"),  # a name
        ("d/" * 2100 + "a.png", "is longer than the OS allows for a file name or path"),  # path
    ],
)
def test_manifest_path_the_os_cannot_take(tmp_path, path, problem, gray8):
    pd.DataFrame({"path": [path], "label": ["Coat"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(PrefineError) as error:
        read_manifest(tmp_path / "m.parquet", gray8)
    shown = repr(path) if len(repr(path)) <= 120 else f"{repr(path)[:60]}...{repr(path)[-60:]}"
    assert str(error.value) == f"{tmp_path / 'm.parquet'}: {ROW_1}: path {shown} {problem}"
