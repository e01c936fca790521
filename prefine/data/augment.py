"""Batched augmentation on float tensors: per-sample random parameters, no per-image Python.

Every function takes a batch [N, C, H, W] in [0, 1] on the training device and draws its
parameters from the generator it is given, so a run's views depend on its seed alone (in
data-parallel training, drawn for the global batch: an image gets the same view on any number
of devices, prefine/distributed.py). Gray images (C = 1, Fashion-MNIST) get the views they
always had; colour images (C = 3, any size) get SimCLR's recipe: random resized crop (area and
aspect), flip, colour jitter (brightness, contrast, saturation, hue), random grayscale and blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from prefine.distributed import rand_rows, randint_rows, randn_rows, uniform_rows


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random (dy, dx) in [-pixels, pixels], filling with zeros."""
    if pixels == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    offsets = randint_rows(0, 2 * pixels + 1, n, 2, generator=generator, device=x.device).T
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = rand_rows(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator, ratio: tuple[float, float] | None = None
) -> torch.Tensor:
    """Crop a random `scale` of the area (random centre) from each image, resized back: the
    image's own shape, or with `ratio` a random aspect (log-uniform, width/height) in it."""
    n = len(x)
    area = uniform_rows(n, *scale, generator, x.device)
    if ratio is None:
        side = torch.stack([area.sqrt(), area.sqrt()], 1)  # (width, height), as fractions
    else:
        log_ratio = uniform_rows(n, *map(math.log, ratio), generator, x.device)
        side = torch.stack([(area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()], 1).clamp(max=1.0)
    centre = (rand_rows(n, 2, generator=generator, device=x.device) * 2 - 1) * (1 - side)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = side[:, 0], side[:, 1]
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def random_brightness_contrast(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Scale contrast around each image's mean and shift brightness, by up to `strength`."""
    n = len(x)
    contrast = 1 + (rand_rows(n, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * strength
    brightness = (rand_rows(n, 1, 1, 1, generator=generator, device=x.device) * 2 - 1) * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(0, 1)


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's and torchvision's grayscale
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _mix(matrices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each image's channels mixed by its own 3x3 matrix [N, 3, 3]."""
    return torch.einsum("nij,njhw->nihw", matrices.to(x.dtype), x)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB [N, 3, H, W] -> its luma in every channel."""
    luma = sum(w * x[:, c : c + 1] for c, w in enumerate(LUMA))
    return luma.expand_as(x)


def _uniform(n: int, spread: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-image factors in [1 - spread, 1 + spread], shaped to scale images."""
    return (1 + (rand_rows(n, generator=generator, device=device) * 2 - 1) * spread).view(n, 1, 1, 1)


def colour_jitter(
    x: torch.Tensor, strength: tuple[float, float, float, float], generator: torch.Generator, p: float = 0.8
) -> torch.Tensor:
    """Brightness, contrast and saturation scaled by up to (b, c, s), hue turned by up to h of a
    full turn (a rotation of the YIQ chroma plane), each image its own, in a random `p` of the
    batch; RGB only."""
    n, dev = len(x), x.device
    b, c, s, h = strength
    y = (x * _uniform(n, b, generator, dev)).clamp(0, 1)
    mean = grayscale(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * _uniform(n, c, generator, dev) + mean).clamp(0, 1)
    gray = grayscale(y)
    y = ((y - gray) * _uniform(n, s, generator, dev) + gray).clamp(0, 1)
    angle = (rand_rows(n, generator=generator, device=dev) * 2 - 1) * h * 2 * math.pi
    turn = torch.zeros(n, 3, 3, device=dev)
    turn[:, 0, 0] = 1
    turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    yiq = YIQ.to(dev)
    y = _mix(torch.linalg.inv(yiq) @ turn @ yiq, y).clamp(0, 1)
    apply = rand_rows(n, generator=generator, device=dev) < p
    return torch.where(apply[:, None, None, None], y, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """A random `p` of the batch turned gray (kept 3-channel)."""
    apply = rand_rows(len(x), generator=generator, device=x.device) < p
    return torch.where(apply[:, None, None, None], grayscale(x), x)


def two_views(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR-style views of a batch, each independent (one_view twice)."""
    return one_view(x, generator), one_view(x, generator)


def one_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A self-supervised view: gray images as they always were (crop-resize, flip,
    brightness/contrast), colour ones by SimCLR's recipe (colour_view)."""
    return gray_view(x, generator) if x.shape[1] == 1 else colour_view(x, generator)


def gray_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    v = random_resized_crop(x, (0.35, 1.0), generator)
    v = random_hflip(v, generator)
    return random_brightness_contrast(v, 0.4, generator)


def colour_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's ImageNet views (Chen et al. 2020), blur sigma scaled to the image size."""
    v = random_resized_crop(x, (0.2, 1.0), generator, ratio=(3 / 4, 4 / 3))
    v = random_hflip(v, generator)
    v = colour_jitter(v, (0.4, 0.4, 0.4, 0.1), generator, p=0.8)
    v = random_grayscale(v, generator, p=0.2)
    return random_gaussian_blur(v, (0.1, max(0.2, 2.0 * x.shape[-1] / 224)), generator, p=0.5).clamp(0, 1)


def random_erasing(
    x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator, p: float = 0.5
) -> torch.Tensor:
    """Zero a random rectangle (area a `scale` fraction of the image, aspect 1/3..3) in a random
    `p` of the batch, so the model cannot lean on any one part of the garment (Cutout)."""
    n, _, h, w = x.shape
    dev = x.device
    area = uniform_rows(n, *scale, generator, dev) * (h * w)
    log_ratio = uniform_rows(n, -math.log(3), math.log(3), generator, dev)
    # height clamped so that width = area / height also fits: the area stays as drawn
    eh = (area * log_ratio.exp()).sqrt().maximum(area / w).clamp(max=h)
    ew = area / eh
    eh = eh.round().clamp(1, h)
    ew = ew.round().clamp(1, w)
    corner = rand_rows(n, 2, generator=generator, device=dev)
    top = (corner[:, 0] * (h - eh + 1)).floor()
    left = (corner[:, 1] * (w - ew + 1)).floor()
    apply = rand_rows(n, generator=generator, device=dev) < p
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def random_gaussian_blur(
    x: torch.Tensor, sigma: tuple[float, float], generator: torch.Generator, p: float = 0.5
) -> torch.Tensor:
    """Blur a random `p` of the batch, each image with its own sigma, so fine texture is not a
    shortcut. One separable depthwise conv over the whole batch (a kernel per image)."""
    n, c, h, w = x.shape
    dev = x.device
    s = uniform_rows(n, *sigma, generator, dev).clamp_min(1e-3)
    apply = rand_rows(n, generator=generator, device=dev) < p
    radius = min(math.ceil(3 * sigma[1]), h - 1, w - 1)
    t = torch.arange(-radius, radius + 1, device=dev)
    kernel = torch.exp(-(t[None, :] ** 2) / (2 * s[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype).repeat_interleave(c, 0)  # [n * c, k]
    k = 2 * radius + 1
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
    return torch.where(apply[:, None, None, None], y.view(n, c, h, w), x)


def random_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of a per-image std drawn from [0, std], clipped to [0, 1]."""
    n = len(x)
    level = rand_rows(n, 1, 1, 1, generator=generator, device=x.device) * std
    noise = randn_rows(n, *x.shape[1:], generator=generator, device=x.device, dtype=x.dtype)
    return (x + level * noise).clamp(0, 1)


def weak_view(x: torch.Tensor, shift: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The fine-tuning augmentation (and FixMatch's weak view): small shifts, optional flips."""
    x = random_shift(x, shift, generator)
    return random_hflip(x, generator) if flip else x


def strong_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """FixMatch's strong view: crop-resize, flip, brightness/contrast, blur, noise and an erased
    rectangle (always, as FixMatch's Cutout), so a confident pseudo-label must survive it."""
    x = random_resized_crop(x, (0.5, 1.0), generator)
    x = random_hflip(x, generator)
    x = random_brightness_contrast(x, 0.4, generator)
    x = random_gaussian_blur(x, (0.1, 1.0), generator, p=0.5)
    x = random_noise(x, 0.05, generator)
    return random_erasing(x, (0.02, 0.25), generator, p=1.0)
