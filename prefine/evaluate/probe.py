"""Cheap looks at an encoder without training anything: embeddings and their kNN accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prefine.data.store import Pixels, gather
from prefine.models.nets import to_float
from prefine.training.device import autocast

BATCH_PIXELS = 1024 * 28 * 28  # pixels a batch holds: 1,024 Fashion-MNIST images, 16 at 224 px
KNN_ROWS = 4096  # rows of the kNN similarity matrix at a time: memory KNN_ROWS x N, not N x N


def batch_size_for(shape: Sequence[int]) -> int:
    """Images embedded at a time for images of `shape` ([..., H, W]): 1,024 at 28 px, fewer as an
    image has more pixels, since activations grow with them: a resnet50 or a vit_b_16 at 224 px
    (16 at a time) must not run out of memory where the conv at 28 px did not."""
    return max(1, BATCH_PIXELS // math.prod(shape[-2:]))


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor | Pixels, device: torch.device,
          batch_size: int | None = None) -> torch.Tensor:
    """Embeddings [N, D] (float32, on the CPU) of uint8 images (in memory, or a split on disk read
    a batch at a time), in eval mode; `batch_size` None: batch_size_for the images."""
    encoder.eval()
    step = batch_size or batch_size_for(images.shape)
    out = []
    for start in range(0, len(images), step):
        x = to_float(gather(images, np.arange(start, min(start + step, len(images)))).to(device))
        with autocast(device):
            out.append(encoder(x).float().cpu())
    return torch.cat(out)


def knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Leave-one-out accuracy of a cosine kNN majority vote: how well the classes cluster. The
    similarities are taken KNN_ROWS rows at a time: 60,000 labeled images need 1 GB, not 14."""
    n = len(labels)
    if n < 2:
        return float("nan")
    z = F.normalize(embeddings, dim=1)
    k = min(k, n - 1)
    classes = int(labels.max()) + 1
    hits = []
    for start in range(0, n, KNN_ROWS):
        sim = z[start : start + KNN_ROWS] @ z.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -float("inf")  # not itself
        votes = F.one_hot(labels[sim.topk(k, dim=1).indices], classes).sum(dim=1)
        hits.append(votes.argmax(dim=1) == labels[start : start + len(sim)])
    return torch.cat(hits).float().mean().item()
