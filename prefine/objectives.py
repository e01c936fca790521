"""Pretraining objectives: a model that owns the encoder and turns a uint8 batch into a loss.

Each objective is an nn.Module with `.encoder` (what gets exported) and
`loss(images_uint8, generator) -> scalar`, so the training loop and the export never care which
method ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prefine.augment import two_views
from prefine.nets import EncoderSpec, build_decoder, build_encoder, to_float
from prefine.params import PretrainParams


class Autoencoder(nn.Module):
    """Reconstruct the image from its embedding (MSE on a sigmoid output).

    With noise > 0 it is a denoising autoencoder: the input gets Gaussian noise of that std
    (clipped to [0, 1]) and the target stays clean.
    """

    def __init__(self, spec: EncoderSpec, noise: float = 0.0) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        self.decoder = build_decoder(spec, self.encoder.dim)
        self.noise = noise

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clean = to_float(images)
        x = clean
        if self.noise > 0:
            noise = torch.randn(clean.shape, generator=generator, device=clean.device)
            x = (clean + self.noise * noise).clamp_(0.0, 1.0)
        return F.mse_loss(self.decoder(self.encoder(x)).float(), clean)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N projections [N, D] x 2: each view's positive is the other view of its
    image, the 2N - 2 other views are its negatives."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(nn.Module):
    """Contrastive: two augmented views of an image should embed closer than any other image."""

    def __init__(self, spec: EncoderSpec, temperature: float = 0.5, projection: int = 64) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        dim = self.encoder.dim
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, projection))
        self.temperature = temperature

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v1, v2 = two_views(to_float(images), generator)
        z = self.projector(self.encoder(torch.cat([v1, v2])))
        return nt_xent(*z.chunk(2), self.temperature)


def build_objective(spec: EncoderSpec, p: PretrainParams) -> nn.Module:
    """The objective named by pretrain.method, with its own knobs from the same section."""
    if p.method == "autoencoder":
        return Autoencoder(spec)
    if p.method == "denoising":
        return Autoencoder(spec, noise=p.noise)
    return SimCLR(spec, p.temperature)
