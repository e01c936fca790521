"""The trivial baselines (prefine/evaluate/baselines.py) and how the evaluate stage reports them."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

from prefine import paths
from prefine.data.store import ImageSet, open_split, read_split, write_split
from prefine.evaluate import baselines
from prefine.models import weights
from prefine.models.nets import Classifier, build_encoder, encoder_spec
from prefine.params import Params
from tasks.evaluate import evaluate

CLASSES = ["top", "middle", "bottom"]


def blocks(per_class: int, seed: int, classes: tuple[int, ...] = (0, 1, 2)) -> ImageSet:
    """16x16 noise with a bright band whose row depends on the class: separable, not trivially."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    images = torch.randint(0, 120, (len(labels), 1, 16, 16), generator=gen)
    for i, label in enumerate(labels.tolist()):
        images[i, 0, 5 * label : 5 * label + 4] += 100
    return ImageSet(images.to(torch.uint8), labels, CLASSES)


def test_every_baseline_beats_chance_on_a_separable_set():
    results = baselines.evaluate(blocks(10, 0), blocks(30, 1), blocks(100, 2).images, k=5)
    assert list(results) == list(baselines.BASELINES)
    for name, r in results.items():
        assert r["accuracy"] > 0.9, name
        assert r["seconds"] >= 0.0 and set(r["per_class"]) == set(CLASSES)


def test_baselines_learn_only_from_the_labeled_set_given():
    """A class absent from the labeled set is never predicted, though the test set and the
    unlabeled pool are full of it."""
    labeled = blocks(10, 0, classes=(0, 1))
    predicted = baselines.predict(labeled, blocks(30, 1).images, blocks(100, 2).images, k=5)
    for name, (classes, _) in predicted.items():
        assert set(classes.tolist()) <= {0, 1}, name


def test_a_test_split_on_disk_is_scored_a_chunk_at_a_time_with_the_same_predictions(tmp_path, monkeypatch):
    """The test images read from shards TEST_CHUNK at a time (not a chunk size that divides them)
    give what the whole tensor in memory gives."""
    labeled = blocks(10, 0)
    _write(tmp_path / "test", blocks(30, 1))
    _write(tmp_path / "pool", blocks(100, 2))
    whole = baselines.predict(labeled, read_split(tmp_path / "test").images, read_split(tmp_path / "pool").images, k=5)
    monkeypatch.setattr(baselines, "TEST_CHUNK", 7)
    streamed = baselines.predict(labeled, open_split(tmp_path / "test").images, open_split(tmp_path / "pool").images,
                                 k=5)
    assert list(streamed) == list(whole)
    for name, (predicted, _) in whole.items():
        assert torch.equal(streamed[name][0], predicted), name


def _results(pretrained: float, scratch: float, best_baseline: float) -> dict[str, dict]:
    results = {name: {"accuracy": 0.5} for name in baselines.BASELINES}
    results["pca_knn"] = {"accuracy": best_baseline}
    return results | {"pretrained": {"accuracy": pretrained}, "scratch": {"accuracy": scratch}}


@pytest.mark.parametrize(
    "pretrained,scratch,baseline,beats_scratch,beats_baseline",
    [
        (0.80, 0.70, 0.85, True, False),  # a baseline scores higher: the pretrained model loses
        (0.80, 0.80, 0.80, False, False),  # a tie is a loss
        (0.90, 0.70, 0.85, True, True),
        (0.60, 0.70, 0.55, False, True),
    ],
)
def test_verdict_is_strict(pretrained, scratch, baseline, beats_scratch, beats_baseline):
    verdict = baselines.verdict(_results(pretrained, scratch, baseline))
    assert verdict == {"beats_scratch": beats_scratch, "beats_best_baseline": beats_baseline, "best_baseline": "pca_knn"}


def _write(folder, data: ImageSet) -> None:
    shas = [hashlib.sha256(image.numpy().tobytes()).hexdigest() for image in data.images]
    manifest = pd.DataFrame({"id": [s[:16] for s in shas], "sha256": shas, "label": data.labels.tolist(),
                             "split": folder.name, "source": "synthetic"})
    write_split(folder, data, manifest)


@pytest.fixture
def evaluated(tmp_path, monkeypatch) -> dict:
    """The evaluate stage in a folder holding separable splits, two untrained (chance) networks,
    and an untrained encoder (its random 2x2-grid features still tell the bands apart)."""
    monkeypatch.chdir(tmp_path)
    for folder, data in ((paths.LABELED_DIR, blocks(10, 0)), (paths.TEST_DIR, blocks(30, 1)),
                         (paths.UNLABELED_DIR, blocks(100, 2))):
        _write(folder, data)
    spec = encoder_spec("conv", 1, 16, 4)
    torch.manual_seed(0)
    grid = encoder_spec("conv", 1, 16, 4, pool=2)
    weights.save(paths.ENCODER_FILE, build_encoder(grid), {"spec": grid, "method": "simclr"})
    for path in (paths.CLASSIFIER_FILE, paths.SCRATCH_FILE):
        meta = {"spec": spec, "classes": CLASSES, "strategy": "full", "labels_per_class": 10, "encoder": None}
        weights.save(path, Classifier(build_encoder(spec), len(CLASSES)), meta)
    return evaluate(Params())


def test_evaluate_writes_headline_metrics_and_says_an_untrained_network_loses(evaluated):
    written = json.loads(paths.EVALUATE_METRICS_FILE.read_text())
    assert written == evaluated
    for name in ("pretrained", "scratch", "linear_probe", *baselines.BASELINES):
        assert set(written[name]) == {"accuracy", "macro_f1"}, name
    assert written["linear_probe"]["accuracy"] > max(written[n]["accuracy"] for n in ("pretrained", "scratch")) + 0.2
    assert written["classes"] == CLASSES and written["labels_per_class"] == 10 and written["test_images"] == 90
    shas = sorted(pd.read_parquet(paths.TEST_DIR / "manifest.parquet")["sha256"])
    assert written["test_set"] == {"sha256": hashlib.sha256("\n".join(shas).encode()).hexdigest(), "images": 90}
    assert set(written["gain_over_scratch"]) == {"accuracy", "macro_f1"}
    assert written["verdict"]["beats_best_baseline"] is False
    assert written["verdict"]["best_baseline"] in baselines.BASELINES


def test_evaluate_puts_per_class_accuracy_and_timings_in_the_detail_file(evaluated):
    detail = json.loads(paths.EVALUATE_DETAIL_FILE.read_text())
    assert set(detail["per_class"]) == {"pretrained", "scratch", "linear_probe", *baselines.BASELINES}
    assert detail["linear_probe_seconds"] > 0
    assert all(set(per_class) == set(CLASSES) for per_class in detail["per_class"].values())
    assert set(detail["baselines"]["seconds"]) == set(baselines.BASELINES)
    assert (paths.CONFUSION_PLOTS_DIR / "pretrained.csv").is_file()
