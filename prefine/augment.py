"""Batched augmentation on float tensors: per-sample random parameters, no per-image Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-pixels, pixels], filling with zeros."""
    if pixels == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    offsets = torch.randint(0, 2 * pixels + 1, (2, n), generator=generator, device=x.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Crop a random square of `scale` of the area (random centre) from each image, resized back."""
    n = len(x)
    area = torch.empty(n, device=x.device).uniform_(*scale, generator=generator)
    side = area.sqrt()
    centre = (torch.rand(n, 2, generator=generator, device=x.device) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def random_brightness_contrast(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Scale contrast around each image's mean and shift brightness, by up to `strength`."""
    n = len(x)
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * strength
    brightness = (torch.rand(n, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(0, 1)


def two_views(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR-style views of a batch: crop-resize, flip, brightness/contrast, each independent."""

    def view() -> torch.Tensor:
        v = random_resized_crop(x, (0.35, 1.0), generator)
        v = random_hflip(v, generator)
        return random_brightness_contrast(v, 0.4, generator)

    return view(), view()
