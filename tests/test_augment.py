"""The batched augmentations added for semi-supervised fine-tuning (the older ones are tested in
test_finetuning.py)."""

import pytest
import torch

from prefine.data.augment import (
    random_erasing,
    random_gaussian_blur,
    random_hflip,
    random_noise,
    random_shift,
    strong_view,
    weak_view,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


AUGMENTS = {
    "erasing": lambda x, g: random_erasing(x, (0.05, 0.3), g, p=0.5),
    "blur": lambda x, g: random_gaussian_blur(x, (0.5, 2.0), g, p=0.5),
    "noise": lambda x, g: random_noise(x, 0.1, g),
    "weak": lambda x, g: weak_view(x, 2, True, g),
    "strong": strong_view,
}


@pytest.mark.parametrize("name", AUGMENTS)
def test_keeps_shape_dtype_range_and_is_reproducible(name):
    f = AUGMENTS[name]
    x = torch.rand(32, 1, 28, 28)
    a, b, other = f(x, gen(0)), f(x, gen(0)), f(x, gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, other)


@pytest.mark.parametrize("name", AUGMENTS)
def test_each_image_gets_its_own_parameters(name):
    x = torch.rand(1, 1, 28, 28).expand(64, -1, -1, -1).contiguous()
    out = AUGMENTS[name](x, gen())
    assert len({img.sum().round(decimals=3).item() for img in out}) > 10


def test_erasing_zeroes_one_rectangle_within_the_scale_bounds():
    x = torch.ones(200, 2, 64, 64)
    out = random_erasing(x, (0.1, 0.3), gen(), p=1.0)
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1])  # the same rectangle through every channel
    fraction = erased[:, 0].float().mean(dim=(1, 2))
    assert 0.1 - 0.01 <= fraction.min() and fraction.max() <= 0.3 + 0.01  # rounding to whole pixels
    rows, cols = erased[:, 0].any(2).sum(1), erased[:, 0].any(1).sum(1)
    assert torch.equal(rows * cols, erased[:, 0].sum(dim=(1, 2)))  # a filled rectangle
    assert len(set(rows.tolist())) > 5 and len(set(cols.tolist())) > 5  # varied aspect ratios
    corners = {(r.nonzero()[0].item(), c.nonzero()[0].item()) for r, c in zip(erased[:, 0].any(2), erased[:, 0].any(1))}
    assert len(corners) > 100  # varied positions


def test_erasing_with_a_full_scale_clears_the_whole_image():
    out = random_erasing(torch.ones(8, 1, 28, 28), (1.0, 1.0), gen(), p=1.0)
    assert torch.all(out == 0)


def test_erasing_applies_to_a_random_p_of_the_batch():
    x = torch.ones(400, 1, 16, 16)
    assert torch.equal(random_erasing(x, (0.1, 0.3), gen(), p=0.0), x)
    touched = (random_erasing(x, (0.1, 0.3), gen(), p=0.5) == 0).flatten(1).any(1).sum().item()
    assert 150 < touched < 250


def test_blur_spreads_a_point_by_a_per_image_amount_and_keeps_flat_images():
    x = torch.zeros(64, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = random_gaussian_blur(x, (0.5, 2.0), gen(), p=1.0)
    assert torch.all(out[:, 0, 7, 7] < 1.0) and torch.all(out[:, 0, 7, 8] > 0)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(64), atol=1e-4)  # the kernel sums to 1
    assert len(set(out[:, 0, 7, 7].round(decimals=4).tolist())) > 30
    flat = torch.full((8, 3, 12, 12), 0.3)
    assert torch.allclose(random_gaussian_blur(flat, (0.5, 2.0), gen(), p=1.0), flat)


def test_blur_applies_to_a_random_p_of_the_batch():
    x = torch.rand(400, 1, 12, 12)
    assert torch.equal(random_gaussian_blur(x, (0.5, 1.0), gen(), p=0.0), x)
    changed = (random_gaussian_blur(x, (0.5, 1.0), gen(), p=0.5) != x).flatten(1).any(1).sum().item()
    assert 150 < changed < 250


def test_noise_level_varies_per_image_up_to_std():
    x = torch.full((64, 1, 32, 32), 0.5)
    out = random_noise(x, 0.1, gen())
    stds = (out - x).std(dim=(1, 2, 3))
    assert stds.max() < 0.1 * 1.2 and stds.min() < 0.02 and stds.max() > 0.08
    assert torch.equal(random_noise(x, 0.0, gen()), x)


def test_weak_view_is_the_fine_tuning_augmentation():
    x = torch.rand(32, 1, 16, 16)
    g = gen()
    expected = random_hflip(random_shift(x, 2, g), g)
    assert torch.equal(weak_view(x, 2, True, gen()), expected)
    assert torch.equal(weak_view(x, 2, False, gen()), random_shift(x, 2, gen()))


def test_strong_view_always_erases_and_differs_from_the_weak_view():
    x = torch.full((64, 1, 28, 28), 0.5)
    out = strong_view(x, gen())
    assert torch.all((out == 0).sum(dim=(1, 2, 3)) >= 0.02 * 28 * 28 - 6)
    assert not torch.allclose(out, weak_view(x, 2, True, gen()))
