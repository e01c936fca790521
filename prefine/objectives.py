"""Pretraining objectives: a model that owns the encoder and turns a uint8 batch into a loss.

Each objective is an nn.Module with `.encoder` (what gets exported) and
`loss(images_uint8, generator) -> scalar`, so the training loop and the export never care which
method ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prefine.nets import EncoderSpec, build_decoder, build_encoder, to_float


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


def build_objective(method: str, spec: EncoderSpec, noise: float) -> Autoencoder:
    """The objective named by pretrain.method."""
    if method == "autoencoder":
        return Autoencoder(spec)
    if method == "denoising":
        return Autoencoder(spec, noise=noise)
    raise ValueError(f"unknown pretrain.method {method!r}")
