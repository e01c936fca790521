"""Cheap looks at an encoder without training anything: embeddings and their kNN accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prefine.models.nets import to_float
from prefine.training.device import autocast


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings [N, D] (float32, on the CPU) of uint8 images, in eval mode."""
    encoder.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size].to(device))
        with autocast(device):
            out.append(encoder(x).float().cpu())
    return torch.cat(out)


def knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Leave-one-out accuracy of a cosine kNN majority vote: how well the classes cluster."""
    n = len(labels)
    if n < 2:
        return float("nan")
    z = F.normalize(embeddings, dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    k = min(k, n - 1)
    neighbours = sim.topk(k, dim=1).indices
    votes = F.one_hot(labels[neighbours], int(labels.max()) + 1).sum(dim=1)
    return (votes.argmax(dim=1) == labels).float().mean().item()
