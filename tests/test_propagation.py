import numpy as np
import torch

from prefine.evaluate import probe
from prefine.evaluate.probe import knn_graph
from prefine.models.nets import build_encoder
from prefine.params import FinetuneParams
from prefine.training import finetuning, propagation
from test_finetuning import SPEC, few_and_pool


def blobs(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian blobs in 8 dimensions, and which blob each point is in."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.zeros(2, 8)
    centres[0, 0], centres[1, 1] = 5.0, 5.0
    truth = torch.arange(2 * n) % 2
    return centres[truth] + torch.randn(2 * n, 8, generator=gen), truth


def test_knn_graph_finds_neighbours_in_the_same_blob_and_never_itself():
    z, truth = blobs()
    index, sims = knn_graph(z, k=5)
    assert index.shape == sims.shape == (100, 5)
    assert not (index == torch.arange(100)[:, None]).any()
    assert (truth[index] == truth[:, None]).all()
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # nearest first


def test_a_large_graph_searches_a_projection_and_keeps_the_exact_neighbours_and_cosines(monkeypatch):
    """Past EXACT_ROWS rows the graph's candidates come from the top principal directions; what it
    returns must still be (nearly all) the exact neighbours, with their exact cosines. The rows,
    as embeddings do, vary mostly along a few directions (here 48) and a little along all."""
    gen = torch.Generator().manual_seed(0)
    dims = probe.PROJECTED + 72
    centres = torch.randn(40, 48, generator=gen) * 2
    latent = centres[torch.arange(3000) % 40] + torch.randn(3000, 48, generator=gen)
    z = latent @ torch.randn(48, dims, generator=gen) + 0.3 * torch.randn(3000, dims, generator=gen)
    monkeypatch.setattr(probe, "EXACT_ROWS", 10**9)
    exact, _ = knn_graph(z, k=10)
    monkeypatch.setattr(probe, "EXACT_ROWS", 1000)
    index, sims = knn_graph(z, k=10)
    assert (exact[:, :, None] == index[:, None, :]).any(2).float().mean() > 0.98
    unit = torch.nn.functional.normalize(z, dim=1)
    assert torch.allclose(sims, (unit[:, None, :] * unit[index]).sum(2), atol=1e-5)
    assert not (index == torch.arange(3000)[:, None]).any()
    assert (sims[:, :-1] >= sims[:, 1:]).all()


def test_one_label_a_blob_spreads_to_the_whole_blob():
    z, truth = blobs()
    seeds = torch.full((100,), -1)
    seeds[0], seeds[1] = truth[0], truth[1]
    scores = propagation.propagate(*knn_graph(z, 10), seeds, classes=2)
    pseudo, weight = propagation.weighted_labels(scores)
    assert torch.equal(pseudo, truth)
    assert (weight > 0).all() and (weight <= 1 + 1e-6).all()  # balanced classes: the weight is the certainty


def test_unsure_and_overfull_classes_weigh_less():
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pseudo, weight = propagation.weighted_labels(scores)
    assert pseudo.tolist() == [0, 0, 0, 1]
    assert weight[1] < weight[0]  # a tie between two classes is unsure
    assert weight[3] > weight[0]  # class 1 has one pseudo-label, class 0 three


def test_pool_sample_keeps_small_pools_whole_and_samples_large_ones_by_seed(monkeypatch):
    assert np.array_equal(propagation.pool_sample(10, 0), np.arange(10))
    monkeypatch.setattr(propagation, "MAX_POOL", 4)
    sample = propagation.pool_sample(10, 0)
    assert len(sample) == 4 and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, propagation.pool_sample(10, 0))


def test_propagate_strategy_learns_the_pool_and_counts_records_on_across_rounds():
    """Two labeled images per class; the pool's propagated labels make the head generalize."""
    torch.manual_seed(0)
    few, unlabeled, pool = few_and_pool()
    p = FinetuneParams(steps=20, batch_size=4, lr=0.01, strategy="propagate", mu=4, rounds=2)
    for strategy in ("propagate", "scratch"):  # the scratch twin runs the same recipe
        model = finetuning.build(build_encoder(SPEC), 2, strategy)
        logged = []
        history = finetuning.train(model, few, p, strategy, 0, torch.device("cpu"), logged.append, unlabeled)
        assert [r["step"] for r in history] == list(range(1, 21)) and history == logged
        assert "pool_loss" in history[-1]
        model.eval()
        assert (model(pool.images.float() / 255).argmax(1) == pool.labels).float().mean() > 0.9

