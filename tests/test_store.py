import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from prefine.atomic import atomic_path
from prefine.data import store
from prefine.errors import PrefineError


def sample(n: int, seed: int = 0) -> tuple[store.ImageSet, pd.DataFrame]:
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 3
    shas = store.content_hashes(images.numpy())
    manifest = pd.DataFrame({"id": [s[:16] for s in shas], "sha256": shas})
    return store.ImageSet(images, labels, ["a", "b", "c"]), manifest


def shard_bytes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*"))}


def shard_files(folder) -> dict[str, tuple[str, int]]:
    """Each shard's sha256 and mtime (ns): what DVC looks at to see a file changed."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.glob("shard-*"))}


def test_round_trip_across_shards_in_manifest_order(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 200)  # 72-byte records: 10 images -> 4 shards
    data, manifest = sample(10)
    store.write_split(tmp_path / "split", data, manifest)
    assert len(list((tmp_path / "split").glob("shard-*.safetensors"))) > 1
    written = store.read_split_manifest(tmp_path / "split")
    order = [manifest["id"].tolist().index(i) for i in written["id"]]
    assert sorted(order) == list(range(10))
    for back in (store.read_split(tmp_path / "split"), store.open_split(tmp_path / "split")):
        images, labels = back.take(torch.arange(10))
        assert torch.equal(images, data.images[order]) and torch.equal(labels, data.labels[order])
        assert back.classes == data.classes and back.shape == (10, 1, 8, 8)


def test_one_shard_keeps_the_order_it_was_given(tmp_path):
    data, manifest = sample(10)
    store.write_split(tmp_path / "split", data, manifest)
    assert store.read_split_manifest(tmp_path / "split")["id"].tolist() == manifest["id"].tolist()
    assert torch.equal(store.read_split(tmp_path / "split").images, data.images)


def test_an_added_image_changes_only_its_own_shard_in_a_fresh_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 600)  # 40 images of 72 bytes -> 8 shards, 41 too
    data, manifest = sample(41)
    first = store.ImageSet(data.images[:40], data.labels[:40], data.classes)
    store.write_split(tmp_path / "a", first, manifest.iloc[:40])
    store.write_split(tmp_path / "b", data, manifest)
    before, after = shard_bytes(tmp_path / "a"), shard_bytes(tmp_path / "b")
    assert len(after) == 8 and set(before) <= set(after)
    changed = [name for name in after if before.get(name) != after[name]]
    assert len(changed) == 1


def test_images_added_to_a_split_go_to_new_shards_and_the_old_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 600)  # 40 images of 72 bytes -> 8 shards; 8 a shard appended
    data, manifest = sample(50)
    old = [i for i in range(50) if i % 5]  # 40 rows; the 10 added come in between them
    store.write_split(tmp_path / "split", store.ImageSet(data.images[old], data.labels[old], data.classes),
                      manifest.iloc[old])
    before = shard_files(tmp_path / "split")
    stored = store.read_split_manifest(tmp_path / "split")["id"].tolist()
    store.write_split(tmp_path / "split", data, manifest)
    after = shard_files(tmp_path / "split")
    assert len(before) == 8 and {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == ["shard-00008.safetensors", "shard-00009.safetensors"]
    ids = store.read_split_manifest(tmp_path / "split")["id"].tolist()
    added = [manifest["id"][i] for i in range(50) if i % 5 == 0]
    assert ids == stored + added  # the stored rows as they were, then the new ones in the order given
    order = [manifest["id"].tolist().index(i) for i in ids]
    for back in (store.read_split(tmp_path / "split"), store.open_split(tmp_path / "split")):
        images, labels = back.take(torch.arange(50))
        assert torch.equal(images, data.images[order]) and torch.equal(labels, data.labels[order])


@pytest.mark.parametrize("change", ["a row removed", "a label changed", "a source renamed", "rows reordered"])
def test_a_split_whose_rows_change_is_laid_out_afresh(tmp_path, change):
    data, manifest = sample(12)
    manifest = manifest.assign(source=[f"{i}.png" for i in range(12)])
    store.write_split(tmp_path / "split", data, manifest)
    if change == "a row removed":
        data, manifest = store.ImageSet(data.images[1:], data.labels[1:], data.classes), manifest.iloc[1:]
    elif change == "a label changed":
        data = store.ImageSet(data.images, (data.labels + 1) % 3, data.classes)
    elif change == "rows reordered":
        data, manifest = store.ImageSet(data.images.flip(0), data.labels.flip(0), data.classes), manifest.iloc[::-1]
    else:
        manifest = manifest.assign(source=[f"{i}.jpg" for i in range(12)])
    store.write_split(tmp_path / "split", data, manifest)
    store.write_split(tmp_path / "fresh", data, manifest)
    assert shard_bytes(tmp_path / "split") == shard_bytes(tmp_path / "fresh")
    assert store.read_split_manifest(tmp_path / "split").equals(store.read_split_manifest(tmp_path / "fresh"))


def test_small_additions_are_compacted_before_the_files_double(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 600)  # 8 shards for 40 to 64 images
    data, manifest = sample(60)
    files = []
    for n in range(40, 61):  # one image at a time: a shard each
        store.write_split(tmp_path / "split", store.ImageSet(data.images[:n], data.labels[:n], data.classes),
                          manifest.iloc[:n])
        files.append(len(list((tmp_path / "split").glob("shard-*"))))
    assert files[:10] == [8, 9, 10, 11, 12, 13, 14, 15, 16, 8]  # the 17th file: laid out afresh
    back = store.read_split(tmp_path / "split")
    assert sorted(map(bytes, back.images.numpy())) == sorted(map(bytes, data.images.numpy()))


def test_reads_take_exactly_the_rows_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 300)
    data, manifest = sample(20)
    store.write_split(tmp_path / "split", data, manifest)
    split = store.open_split(tmp_path / "split")
    whole = store.read_split(tmp_path / "split")
    rows = torch.tensor([19, 0, 7, 7, 3])
    assert torch.equal(split.take(rows)[0], whole.images[rows])


def test_a_truncated_shard_is_named(tmp_path):
    data, manifest = sample(6)
    store.write_split(tmp_path / "split", data, manifest)
    shard = next((tmp_path / "split").glob("shard-*"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(PrefineError, match=rf"{shard.name}: truncated or damaged"):
        store.read_split(tmp_path / "split")


def test_failed_write_leaves_nothing(tmp_path):
    data, manifest = sample(5)
    with pytest.raises(ValueError, match="manifest has 4 rows for 5 images"):
        store.write_split(tmp_path / "split", data, manifest.iloc[:4])
    assert list(tmp_path.iterdir()) == []


def test_a_writer_killed_midway_leaves_the_old_split(tmp_path, monkeypatch):
    old, manifest = sample(8)
    store.write_split(tmp_path / "split", old, manifest)
    before = shard_bytes(tmp_path / "split")
    new, manifest = sample(8, seed=1)

    def dies(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(store.ImageSet, "take", dies)
    with pytest.raises(RuntimeError):
        store.write_split(tmp_path / "split", new, manifest)
    assert shard_bytes(tmp_path / "split") == before and [p.name for p in tmp_path.iterdir()] == ["split"]


def test_atomic_path_keeps_the_old_version_when_the_writer_dies(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_reading_a_missing_split_says_what_to_run(tmp_path):
    with pytest.raises(PrefineError, match="run ingest"):
        store.read_split(tmp_path / "nope")


def test_shard_count_is_a_power_of_two_sized_by_bytes():
    assert [store.shard_count(n, store.SHARD_BYTES // 10) for n in (0, 1, 10, 11, 40, 41)] == [1, 1, 1, 2, 4, 8]
    assert np.array_equal(store.shard_of(pd.Series(["0" * 8 + "8" + "0" * 55]), 2), [1])
