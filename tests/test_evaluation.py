import math

import pytest
import torch

from prefine.evaluate.metrics import scores
from prefine.evaluate.probe import knn_accuracy


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
