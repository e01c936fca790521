"""Pretraining objectives: a model that owns the encoder and turns a uint8 batch into a loss.

Each objective is an nn.Module with `.encoder` (what gets exported) and
`loss(images_uint8, generator) -> scalar` (or `(scalar, {name: scalar})` when it has parts worth
logging per epoch, as the GAN's two players), so the training loop and the export never care
which method ran. An objective may set `betas` for its Adam(W).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prefine.data.augment import one_view, two_views
from prefine.distributed import gather, randn_rows
from prefine.models.gan import GAN
from prefine.models.nets import EncoderSpec, build_decoder, build_encoder, require_small_encoder, to_float, widen
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
            noise = randn_rows(len(clean), *clean.shape[1:], generator=generator, device=clean.device)
            x = (clean + self.noise * noise).clamp_(0.0, 1.0)
        return F.mse_loss(widen(self.decoder(self.encoder(x))), clean)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2N projections [N, D] x 2: each view's positive is the other view of its
    image, the 2N - 2 other views are its negatives."""
    z = F.normalize(widen(torch.cat([z1, z2])), dim=1)
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
        z1, z2 = self.projector(self.encoder(torch.cat([v1, v2]))).chunk(2)
        return nt_xent(gather(z1), gather(z2), self.temperature)  # negatives from every device


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0
) -> torch.Tensor:
    """VICReg (Bardes et al. 2022) over two views' expansions [N, D] (N >= 2): mean squared
    distance between the views, a hinge keeping each dimension's std across the batch at 1 or
    more, and the squared off-diagonal covariances (per dimension), weighted 25 / 25 / 1."""
    z1, z2 = widen(z1), widen(z2)
    n, d = z1.shape
    spread, decorrelation = 0.0, 0.0
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        spread = spread + F.relu(1.0 - torch.sqrt(z.var(dim=0) + 1e-4)).mean() / 2
        cov = z.T @ z / (n - 1)
        decorrelation = decorrelation + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
    return invariance * F.mse_loss(z1, z2) + variance * spread + covariance * decorrelation


class VICReg(nn.Module):
    """Non-contrastive: two views of an image expand to the same vector, while variance and
    covariance terms keep the batch from collapsing to one point, so no negatives are needed."""

    def __init__(self, spec: EncoderSpec, expander: int = 512) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        self.expander = nn.Sequential(
            nn.Linear(self.encoder.dim, expander), nn.BatchNorm1d(expander), nn.ReLU(),
            nn.Linear(expander, expander), nn.BatchNorm1d(expander), nn.ReLU(),
            nn.Linear(expander, expander),
        )

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        v1, v2 = two_views(to_float(images), generator)
        z1, z2 = self.expander(self.encoder(torch.cat([v1, v2]))).chunk(2)
        return vicreg_loss(gather(z1), gather(z2))  # variance and covariance over the global batch


class Cluster(nn.Module):
    """Predict each image's pseudo-class (models/clusters.py: k-means of the pool's HOG) from
    one augmented view: a classification task, so one forward pass an image, not two."""

    def __init__(self, spec: EncoderSpec, clusters: int = 100) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        self.head = nn.Linear(self.encoder.dim, clusters)

    def loss(self, images: torch.Tensor, generator: torch.Generator, clusters: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(widen(self.head(self.encoder(one_view(to_float(images), generator)))), clusters)


def build_objective(spec: EncoderSpec, p: PretrainParams) -> nn.Module:
    """The objective named by pretrain.method, with its own knobs from the same section."""
    if p.method in ("autoencoder", "denoising", "gan"):
        require_small_encoder(spec, p.method)
    if p.method == "autoencoder":
        return Autoencoder(spec)
    if p.method == "denoising":
        return Autoencoder(spec, noise=p.noise)
    if p.method == "gan":
        return GAN(spec, p.latent)
    if p.method == "vicreg":
        return VICReg(spec, p.expander)
    if p.method == "cluster":
        return Cluster(spec, p.clusters)
    return SimCLR(spec, p.temperature)


def load_pretrained(state_file: Path) -> tuple[nn.Module, dict]:
    """The objective saved in a pretraining state file (training.fit's), and the whole state."""
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    meta = state["meta"]
    objective = build_objective(meta["spec"], PretrainParams(**meta["pretrain"]))
    objective.load_state_dict(state["model"])
    return objective, state
