"""Cheap looks at an encoder without training it: embeddings, their kNN accuracy, and a linear
probe fitted to convergence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from prefine.data.store import ImageSet, Pixels, gather
from prefine.models.nets import Classifier, to_float
from prefine.training.device import autocast

# pixels an embedding batch holds: on a GPU 1,024 Fashion-MNIST images (16 at 224 px); on a CPU 128,
# whose activations stay in its caches: 2.3x the images/s of 1,024 on a 2-core host (docs/results.md)
BATCH_PIXELS = {"cuda": 1024 * 28 * 28, "cpu": 128 * 28 * 28}
PROBE_C = 0.1  # inverse L2 strength on standardised embeddings: at 100/class 1 point above C = 1
PROBE_MAX_ITER = 2000  # L-BFGS iterations; 1,000 embeddings of 512 numbers converge in a few hundred
KNN_ROWS = 4096  # rows of the kNN similarity matrix at a time: memory KNN_ROWS x N, not N x N
EXACT_ROWS = 10_000  # kNN graphs up to this many rows are exact; larger ones search a projection first
PROJECTED = 128  # dimensions that search runs in
CANDIDATES = 30  # neighbours a row takes from it, to rank by their exact cosine


def batch_size_for(shape: Sequence[int], device: torch.device) -> int:
    """Images embedded at a time on `device` for images of `shape` ([..., H, W]): fewer as an image
    has more pixels, since activations grow with them: a resnet50 or a vit_b_16 at 224 px (16 at a
    time on a GPU) must not run out of memory where the conv at 28 px (1,024) did not."""
    return max(1, BATCH_PIXELS["cuda" if device.type == "cuda" else "cpu"] // math.prod(shape[-2:]))


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor | Pixels, device: torch.device,
          batch_size: int | None = None) -> torch.Tensor:
    """Embeddings [N, D] (float32, on the CPU) of uint8 images (in memory, or a split on disk read
    a batch at a time), in eval mode; `batch_size` None: batch_size_for the images."""
    encoder.eval()
    step = batch_size or batch_size_for(images.shape, device)
    out = []
    for start in range(0, len(images), step):
        x = to_float(gather(images, np.arange(start, min(start + step, len(images)))).to(device))
        with autocast(device):
            out.append(encoder(x).float().cpu())
    return torch.cat(out)


def knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Leave-one-out accuracy of a cosine kNN majority vote: how well the classes cluster."""
    n = len(labels)
    if n < 2:
        return float("nan")
    index, _ = knn_graph(embeddings, k)
    votes = F.one_hot(labels[index], int(labels.max()) + 1).sum(dim=1)
    return (votes.argmax(dim=1) == labels).float().mean().item()


def knn_graph(embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [N, k], cosine similarities [N, k]), on the CPU, of each row's k nearest other rows,
    nearest first, computed where `embeddings` are (on a GPU when training runs on one). The
    similarities are taken KNN_ROWS rows at a time: memory KNN_ROWS x N, not N x N (60,000 images
    need 1 GB, not 14). Graphs of more than EXACT_ROWS rows of more than PROJECTED numbers search
    in the rows' top PROJECTED principal directions first, then rank the CANDIDATES found there by
    their exact cosine: on the default run's graphs (61,000 x 512) 99.3-99.9% of the exact
    neighbours in half the time (docs/results.md)."""
    z = F.normalize(embeddings, dim=1)
    k = min(k, len(z) - 1)
    projected = len(z) > EXACT_ROWS and z.shape[1] > PROJECTED
    search, found = (_principal(z), CANDIDATES) if projected else (z, k)
    index = torch.empty(len(z), k, dtype=torch.long, device=z.device)
    sims = torch.empty(len(z), k, device=z.device)
    # one block, reused: a fresh 1 GB for each costs its page faults (+20% time on a 2-core CPU)
    block = torch.empty(min(KNN_ROWS, len(z)), len(z), dtype=z.dtype, device=z.device)
    for start in range(0, len(z), KNN_ROWS):
        rows = slice(start, start + KNN_ROWS)
        sim = torch.mm(search[rows], search.T, out=block[: len(search[rows])])
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -float("inf")  # not itself
        top, near = sim.topk(found, dim=1)
        if projected:  # the candidates' exact cosines, nearest first
            top, order = torch.einsum("rd,rcd->rc", z[rows], z[near]).topk(k, dim=1)
            near = near.gather(1, order)
        sims[rows], index[rows] = top, near
    return index.cpu(), sims.cpu()


def _principal(z: torch.Tensor) -> torch.Tensor:
    """`z` in the PROJECTED directions that best keep its rows' dot products (the top right singular
    vectors of a seeded sample of at most EXACT_ROWS rows, uncentred)."""
    sample = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:EXACT_ROWS].to(z.device)
    return z @ torch.linalg.svd(z[sample], full_matrices=False)[2][:PROJECTED].T


def linear_probe(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [classes, D], bias [classes]) of a multinomial logistic regression of `labels` on
    `embeddings`, fitted to convergence by L-BFGS on standardised features with PROBE_C, then
    folded back so that it applies to the raw embeddings: the probe a frozen encoder deserves, in
    seconds, where SGD steps leave it under-trained. A class absent from `labels` gets a bias
    that never wins."""
    x = embeddings.double().numpy()
    mean, std = x.mean(0), x.std(0) + 1e-6
    present = np.unique(labels.numpy())
    weight, bias = np.zeros((classes, x.shape[1])), np.full(classes, -1e4)
    if len(present) == 1:
        bias[present[0]] = 0.0
    else:
        from sklearn.linear_model import LogisticRegression  # here: 1 s to import, the kNN probe needs none

        with threadpool_limits(limits=1):  # a small problem: BLAS threads only contend on a busy host
            fit = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER).fit((x - mean) / std, labels.numpy())
        coef = fit.coef_ if len(present) > 2 else np.concatenate([-fit.coef_, fit.coef_]) / 2
        intercept = fit.intercept_ if len(present) > 2 else np.concatenate([-fit.intercept_, fit.intercept_]) / 2
        weight[present] = coef / std
        bias[present] = intercept - (coef / std) @ mean
    return torch.from_numpy(weight).float(), torch.from_numpy(bias).float()


def probe_head(model: Classifier, labeled: ImageSet, device: torch.device) -> None:
    """Set the head to the converged linear probe of the encoder's embeddings of `labeled`."""
    weight, bias = linear_probe(embed(model.encoder, labeled.images, device), labeled.labels, model.head.out_features)
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(bias)
