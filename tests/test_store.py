import pandas as pd
import pytest
import torch

from prefine.atomic import atomic_path
from prefine.data import store
from prefine.errors import PrefineError


def sample(n: int) -> tuple[store.ImageSet, pd.DataFrame]:
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return store.ImageSet(images, labels, ["a", "b", "c"]), pd.DataFrame({"id": [f"i{k}" for k in range(n)]})


def test_round_trip_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_SIZE", 4)
    data, manifest = sample(10)
    store.write_split(tmp_path / "split", data, manifest)
    assert len(list((tmp_path / "split").glob("shard-*.safetensors"))) == 3
    back = store.read_split(tmp_path / "split")
    assert torch.equal(back.images, data.images) and torch.equal(back.labels, data.labels)
    assert back.classes == data.classes
    assert store.read_split_manifest(tmp_path / "split")["id"].tolist() == manifest["id"].tolist()


def test_failed_write_leaves_nothing(tmp_path):
    data, manifest = sample(5)
    with pytest.raises(ValueError, match="manifest has 4 rows for 5 images"):
        store.write_split(tmp_path / "split", data, manifest.iloc[:4])
    assert list(tmp_path.iterdir()) == []


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
