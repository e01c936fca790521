"""Label propagation: the labeled budget's labels spread over the unlabeled pool along a kNN graph
of the encoder's embeddings (Zhou et al. 2004, as Iscen et al. 2019 use it to train a network).

Why: at 10 labels per class the pool's 60,000 images are the data, and how they cluster is what
pretraining changes. On a 2-epoch SimCLR encoder's kNN graph propagation labels the pool 0.751
correctly from 100 labels, on a k-means-pretrained encoder's 0.773 (pixel clusters; 0.812 with
the HOG clusters `cluster` predicts now), on a random encoder's 0.721
(docs/results.md), so a network trained on the propagated labels inherits the pretraining's gain,
where FixMatch's gain was as large from scratch as from the encoder.

Each pseudo-label comes with a weight: its certainty (1 - entropy / log classes) times its
class's inverse frequency among the pseudo-labels, so that neither unsure images nor the classes
the graph over-fills dominate the loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from prefine.data.store import ImageSet, Pixels, Rows
from prefine.evaluate.probe import embed, knn_graph
from prefine.models.nets import Encoder

NEIGHBOURS = 10  # graph degree (before symmetrising)
ALPHA = 0.99  # how far labels spread: the weight of the neighbours against the seed labels
ITERATIONS = 20  # power iterations of F <- ALPHA * S F + (1 - ALPHA) Y
SHARPEN = 3  # edge weight = cosine similarity ** SHARPEN (negative ones dropped)
MAX_POOL = 100_000  # pool images in the graph (a seeded sample beyond): the graph costs O(N^2) time


def pool_sample(size: int, seed: int) -> np.ndarray:
    """Rows of the pool that join the graph: all up to MAX_POOL, else a seeded sample, sorted."""
    if size <= MAX_POOL:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, MAX_POOL, replace=False))


def propagate(index: torch.Tensor, sims: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Class scores [N, classes] of every node; `labels` [N] holds a class for the seeds, -1 for
    the rest. The graph is symmetrised and normalised (D^-1/2 W D^-1/2)."""
    n, k = index.shape
    rows = torch.arange(n).repeat_interleave(k)
    w = sims.clamp(min=0).pow(SHARPEN).flatten()
    graph = torch.sparse_coo_tensor(torch.stack([rows, index.flatten()]), w, (n, n), check_invariants=False)
    graph = (graph + graph.t()).coalesce()
    i, values = graph.indices(), graph.values()
    d = torch.zeros(n).index_add_(0, i[0], values).clamp(min=1e-12).rsqrt()
    s = torch.sparse_coo_tensor(i, values * d[i[0]] * d[i[1]], (n, n), check_invariants=False).coalesce()
    seeds = torch.zeros(n, classes)
    known = labels >= 0
    seeds[known, labels[known]] = 1.0
    scores = seeds.clone()
    for _ in range(ITERATIONS):
        scores = ALPHA * torch.sparse.mm(s, scores) + (1 - ALPHA) * seeds
    return scores


def weighted_labels(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-label, weight) per row of propagated scores: certainty x inverse class frequency,
    scaled so a balanced, certain pool weighs 1 an image."""
    classes = scores.shape[1]
    p = scores.clamp(min=0)
    p = p / p.sum(1, keepdim=True).clamp(min=1e-12)
    certainty = 1 + (p * p.clamp(min=1e-12).log()).sum(1) / math.log(classes)
    pseudo = p.argmax(1)
    counts = torch.bincount(pseudo, minlength=classes).float().clamp(min=1)
    return pseudo, certainty * (len(pseudo) / classes) / counts[pseudo]


def pool_labels(encoder: Encoder, labeled: ImageSet, pool: Pixels | torch.Tensor, rows: np.ndarray,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels, weights) of the pool images `rows`, propagated from `labeled` over the kNN
    graph of the encoder's standardised embeddings (labeled and pool images together)."""
    z = torch.cat([embed(encoder, labeled.images, device), embed(encoder, Rows(pool, rows), device)])
    z = (z - z.mean(0)) / (z.std(0) + 1e-6)
    index, sims = knn_graph(z.to(device), NEIGHBOURS)
    seeds = torch.cat([labeled.labels, torch.full((len(rows),), -1, dtype=torch.long)])
    scores = propagate(index, sims, seeds, len(labeled.classes))
    return weighted_labels(scores[len(labeled):])

