"""Pseudo-classes for the `cluster` pretraining method: k-means of the pool's HOG descriptors.

Why: on a CPU budget the encoder learns more per second from a classification task than from
contrastive pairs (one view an image, not two), and what it learns is as good as its targets.
Histograms of oriented gradients (Dalal & Triggs 2005; MaskFeat's targets) group Fashion-MNIST's
pool by class better than its pixels do: k-means purity 0.809 against 0.743 (100 clusters), and
label propagation over their kNN graph labels the pool 0.797 correctly from 10 labels a class
against 0.751. An encoder trained 8 epochs to predict the HOG clusters propagates 0.811 against
0.781 for pixel clusters, and its linear probe scores 0.771 against 0.744 (docs/results.md).

Bounded work at any size: PCA and k-means are fitted on at most FIT_ROWS images (a seeded sample),
each shrunk to at most FIT_SIDE pixels a side, and every image is then assigned a batch at a time.
Deterministic on the CPU for a seed, so a resumed pretraining trains on the same clusters.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from prefine.data.store import Pixels, gather
from prefine.models.nets import to_float

FIT_ROWS = 30_000  # images PCA and k-means are fitted on
FIT_SIDE = 32  # images larger than this are area-shrunk to it first
COMPONENTS = 64  # PCA dimensions clustered
CELLS = 7  # HOG cells a side (4-pixel cells at 28 pixels)
BINS = 9  # HOG orientation bins over 0-180 degrees
CLIP = 0.2  # HOG block normalisation: L2, clipped at this, L2 again (L2-Hys)
ITERATIONS = 30  # k-means (spherical) iterations
BATCH = 4096  # images read (and shrunk) at a time


def hog(images: torch.Tensor) -> torch.Tensor:
    """HOG descriptors [N, (CELLS - 1)^2 * 4 * BINS] of images [N, C, H, W]: unsigned gradient
    orientations binned (linearly) per cell, weighted by magnitude, each 2 x 2 block of cells
    L2-Hys normalised. Colour images take each pixel's gradient from the channel where it is largest."""
    x = to_float(images)
    if x.shape[-1] > FIT_SIDE or x.shape[-2] > FIT_SIDE:
        x = F.adaptive_avg_pool2d(x, FIT_SIDE)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    magnitude = (gx * gx + gy * gy).sqrt()
    strongest = magnitude.argmax(1, keepdim=True)
    magnitude, gx, gy = (t.gather(1, strongest) for t in (magnitude, gx, gy))
    position = torch.atan2(gy, gx).remainder(math.pi) * (BINS / math.pi)
    low = position.floor()
    share = position - low
    low = low.long() % BINS
    histogram = torch.zeros(len(x), BINS, *x.shape[2:], dtype=x.dtype)
    histogram.scatter_add_(1, low, magnitude * (1 - share)).scatter_add_(1, (low + 1) % BINS, magnitude * share)
    cells = F.adaptive_avg_pool2d(histogram, CELLS)
    blocks = cells.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).flatten(3)
    blocks = F.normalize(F.normalize(blocks, dim=-1).clamp(max=CLIP), dim=-1)
    return blocks.flatten(1)


def hog_clusters(images: torch.Tensor | Pixels, clusters: int, seed: int) -> torch.Tensor:
    """The k-means cluster [N] (int64, 0..clusters-1) of each image, by cosine on PCA of its HOG."""
    n = len(images)
    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, FIT_ROWS, replace=False)) if n > FIT_ROWS else np.arange(n)
    x = torch.cat([hog(gather(images, fit_rows[i : i + BATCH])) for i in range(0, len(fit_rows), BATCH)])
    mean = x.mean(0)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # pca_lowrank draws a random projection
    _, _, basis = torch.pca_lowrank(x - mean, q=min(COMPONENTS, *x.shape), center=False, niter=3)
    torch.random.set_rng_state(generator_state)
    z = F.normalize((x - mean) @ basis, dim=1)
    k = min(clusters, len(z))
    centres = z[torch.from_numpy(rng.choice(len(z), k, replace=False))].clone()
    for _ in range(ITERATIONS):
        assign = (z @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        filled = torch.bincount(assign, minlength=k) > 0
        centres[filled] = F.normalize(sums[filled], dim=1)  # an empty cluster keeps its centre
    out = torch.empty(n, dtype=torch.long)
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(start + BATCH, n))
        z = F.normalize((hog(gather(images, rows)) - mean) @ basis, dim=1)
        out[start : start + len(rows)] = (z @ centres.T).argmax(1)
    return out
