import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prefine.data import store
from prefine.evaluate import probe
from prefine.evaluate.metrics import confusion, scores
from prefine.evaluate.probe import knn_accuracy, linear_probe

CPU = torch.device("cpu")


def test_scores_on_a_hand_checked_example():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    result = scores(labels, predicted, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    # F1: a = 0.5 (p 1/2, r 1/2), b = 0.8 (p 2/3, r 1), c = 2/3 (p 1, r 1/2)
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_knn_accuracy_is_one_on_separated_clusters_and_chance_on_noise():
    gen = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 10
    labels = torch.arange(4).repeat_interleave(25)
    clustered = centers[labels] + torch.randn(100, 4, generator=gen)
    assert knn_accuracy(clustered, labels, k=5) == 1.0
    noise = torch.randn(100, 4, generator=gen)
    assert knn_accuracy(noise, labels, k=5) < 0.5


def test_knn_accuracy_needs_two_points():
    assert math.isnan(knn_accuracy(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), k=5))


def test_linear_probe_applies_to_raw_embeddings_and_never_predicts_an_absent_class():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 4 + 50  # far from the origin, unscaled: the folding matters
    labels = torch.arange(3).repeat_interleave(20)
    x = centres[labels] + torch.randn(60, 16, generator=gen)
    weight, bias = linear_probe(x, labels, classes=5)  # classes 3 and 4 have no image
    assert weight.shape == (5, 16) and bias.shape == (5,)
    assert torch.equal((x @ weight.T + bias).argmax(1), labels)
    anywhere = torch.randn(500, 16, generator=gen) * 100
    assert set((anywhere @ weight.T + bias).argmax(1).tolist()) <= {0, 1, 2}


def test_linear_probe_of_two_classes_and_of_one():
    x = torch.tensor([[0.0, 1.0], [0.2, 1.1], [3.0, 1.0], [3.1, 0.9]])
    weight, bias = linear_probe(x, torch.tensor([1, 1, 0, 0]), classes=2)
    assert torch.equal((x @ weight.T + bias).argmax(1), torch.tensor([1, 1, 0, 0]))
    weight, bias = linear_probe(x, torch.tensor([1, 1, 1, 1]), classes=3)
    assert torch.equal((x @ weight.T + bias).argmax(1), torch.ones(4, dtype=torch.long))


def test_embed_batches_by_pixels_and_reads_a_split_on_disk(tmp_path):
    shapes = ((5, 1, 28, 28), (3, 224, 224), (3, 96, 96), (1, 4096, 4096))
    assert [probe.batch_size_for(s, torch.device("cuda")) for s in shapes] == [1024, 16, 87, 1]
    assert [probe.batch_size_for(s, CPU) for s in shapes] == [128, 2, 10, 1]
    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    manifest = pd.DataFrame({"sha256": store.content_hashes(images.numpy())})
    store.write_split(tmp_path / "split", store.ImageSet(images, torch.zeros(50, dtype=torch.long), ["a"]), manifest)
    on_disk = store.open_split(tmp_path / "split").images
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(36, 4))
    whole = probe.embed(encoder, images, CPU)
    assert torch.allclose(probe.embed(encoder, on_disk, CPU, batch_size=7), whole, atol=1e-6)


def test_knn_accuracy_is_the_same_a_few_rows_at_a_time(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat(40)
    embeddings = F.one_hot(labels, 5).float() * 2 + torch.randn(200, 5, generator=gen)
    whole = knn_accuracy(embeddings, labels, k=5)
    monkeypatch.setattr(probe, "KNN_ROWS", 7)
    assert knn_accuracy(embeddings, labels, k=5) == whole and 0.3 < whole < 1.0


def test_counted_metrics_agree_with_scikit_learn():
    """scores() counts with numpy; scikit-learn's definitions (macro-F1 over every class, 0 for a
    class neither seen nor predicted) are the reference, on random labelings and degenerate ones."""
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = int(rng.integers(1, 60)), int(rng.integers(2, 12))
        y = rng.integers(0, k, n)
        p = np.zeros(n, np.int64) if trial % 4 == 0 else np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n))
        got = scores(torch.tensor(y), torch.tensor(p), [str(c) for c in range(k)])
        assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=list(range(k)), zero_division=0))
        assert got["accuracy"] == pytest.approx((y == p).mean())
        assert np.array_equal(confusion(torch.tensor(y), torch.tensor(p), k), confusion_matrix(y, p, labels=list(range(k))))
