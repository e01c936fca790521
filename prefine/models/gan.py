"""DCGAN pretraining: the discriminator's trunk is the encoder that gets exported.

Both players train in the one loss of the shared loop (one optimizer, one backward), so the
state saved every epoch resumes exactly like any other objective: L_D sees the fakes detached,
and L_G sees the discriminator through detached weights, so each loss reaches only its own
player (simultaneous updates). At the end, tasks/pretrain.py draws a grid of samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prefine.atomic import atomic_path
from prefine.distributed import randn_rows
from prefine.models.nets import EncoderSpec, build_encoder, mlp_to_image, to_float, widen


def build_generator(spec: EncoderSpec, latent: int) -> nn.Module:
    """z [N, latent] -> image [N, C, size, size] in [0, 1] (sigmoid), sized like the encoder's input.

    conv: DCGAN (project to a (4w, size/4, size/4) map, two stride-2 transposed convs, BatchNorm
    and ReLU); mlp: an MLP, as a GAN for the seed's MLP encoder would be. image_size is a multiple
    of 4 (the params schema says so).
    """
    c, size, w = spec["channels"], spec["image_size"], spec["width"]
    if spec["kind"] == "mlp":
        return mlp_to_image((latent, 256, 512), c, size)
    s = size // 4
    return nn.Sequential(
        nn.Linear(latent, 4 * w * s * s, bias=False), nn.BatchNorm1d(4 * w * s * s), nn.ReLU(),
        nn.Unflatten(1, (4 * w, s, s)),
        nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, c, 3, padding=1), nn.Sigmoid(),
    )


class GAN(nn.Module):
    """D(x) = head(encoder(x)), a real/fake logit; G(z) an image. The seed's losses, as logits:
    L_D = -log D(x) - log(1 - D(G(z))), L_G = -log D(G(z)) (non-saturating).

    Real and fake images go through D as one batch: the encoder ends in BatchNorm, ReLU and
    global average pooling, so a batch of fakes alone would be normalized to the statistics of a
    batch of reals and D could barely tell them apart (measured: its loss hardly moves).
    """

    betas = (0.5, 0.999)  # DCGAN's Adam: a short memory, as the other player keeps moving

    def __init__(self, spec: EncoderSpec, latent: int = 64) -> None:
        super().__init__()
        self.encoder = build_encoder(spec)
        self.head = nn.Linear(self.encoder.dim, 1)
        self.generator = build_generator(spec, latent)
        self.latent = latent

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The discriminator: float images [N, C, H, W] -> real/fake logits [N]."""
        return self.head(self.encoder(images)).squeeze(1)

    def _frozen(self, images: torch.Tensor) -> torch.Tensor:
        """D through detached weights and copies of the BatchNorm buffers: gradients reach only
        the input, and the running statistics are not updated twice in a step."""
        tensors = {name: b.clone() for name, b in self.encoder.named_buffers(prefix="encoder")}
        for part in ("encoder", "head"):
            tensors |= {name: p.detach() for name, p in getattr(self, part).named_parameters(prefix=part)}
        return functional_call(self, tensors, (images,))

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_D + L_G, and the parts logged per epoch: both losses and the mean D(x), D(G(z))."""
        real = to_float(images)
        n = len(real)
        z = randn_rows(n, self.latent, generator=generator, device=real.device)
        fake = self.generator(z)
        d_real, d_fake = widen(self(torch.cat([real, fake.detach()]))).split(n)
        g_fake = widen(self._frozen(torch.cat([real, fake]))[n:])
        bce = F.binary_cross_entropy_with_logits
        d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
        g_loss = bce(g_fake, torch.ones_like(g_fake))
        parts = {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "d_real": torch.sigmoid(d_real).mean().detach(),
            "d_fake": torch.sigmoid(d_fake).mean().detach(),
        }
        return d_loss + g_loss, parts

    @torch.no_grad()
    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Images from a given z, in eval mode (BatchNorm's running statistics)."""
        was_training = self.training
        self.eval()
        try:
            return self.generator(z)
        finally:
            self.train(was_training)


def save_samples(model: GAN, path: Path, seed: int, count: int = 64) -> None:
    """A grid of samples from a z fixed by `seed`, so runs compare and mode collapse shows."""
    z = torch.randn(count, model.latent, generator=torch.Generator().manual_seed(seed))
    images = model.sample(z.to(next(model.parameters()).device)).float().cpu()
    from torchvision.utils import save_image  # here: importing torchvision costs every stage 1.3 s

    with atomic_path(path) as tmp:
        save_image(images, tmp, nrow=8, padding=2, pad_value=1.0, format="png")
