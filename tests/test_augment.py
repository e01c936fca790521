"""The batched augmentations added for semi-supervised fine-tuning (the older ones are tested in
test_finetuning.py)."""

import pytest
import torch

from prefine.data.augment import (
    colour_jitter,
    colour_view,
    grayscale,
    random_brightness_contrast,
    random_erasing,
    random_gaussian_blur,
    random_grayscale,
    random_hflip,
    random_noise,
    random_resized_crop,
    random_shift,
    strong_view,
    two_views,
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
    "jitter": lambda x, g: colour_jitter(x, (0.4, 0.4, 0.4, 0.1), g),
    "colour": colour_view,
}
RGB = {"jitter", "colour"}


@pytest.mark.parametrize("name", AUGMENTS)
def test_keeps_shape_dtype_range_and_is_reproducible(name):
    f = AUGMENTS[name]
    x = torch.rand(32, 3 if name in RGB else 1, 28, 28)
    a, b, other = f(x, gen(0)), f(x, gen(0)), f(x, gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, other)


@pytest.mark.parametrize("name", AUGMENTS)
def test_each_image_gets_its_own_parameters(name):
    x = torch.rand(1, 3 if name in RGB else 1, 28, 28).expand(64, -1, -1, -1).contiguous()
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


def test_gray_views_are_what_they_always_were():
    """Fashion-MNIST's views draw the same numbers as before colour came: same runs, same results."""
    x = torch.rand(8, 1, 16, 16)
    g = gen()
    expected = []
    for _ in range(2):
        v = random_hflip(random_resized_crop(x, (0.35, 1.0), g), g)
        expected.append(random_brightness_contrast(v, 0.4, g))
    assert all(torch.equal(a, b) for a, b in zip(two_views(x, gen()), expected))


def test_colour_jitter_at_zero_strength_and_its_extremes():
    x = torch.rand(16, 3, 8, 8)
    assert torch.allclose(colour_jitter(x, (0.0, 0.0, 0.0, 0.0), gen(), p=1.0), x, atol=1e-5)
    assert torch.equal(colour_jitter(x, (0.4, 0.4, 0.4, 0.1), gen(), p=0.0), x)
    muted = 0.4 + 0.2 * x  # chroma small enough that a turned hue stays inside the RGB cube
    hue_only = colour_jitter(muted, (0.0, 0.0, 0.0, 0.5), gen(), p=1.0)
    assert torch.allclose(grayscale(hue_only), grayscale(muted), atol=1e-4)  # a hue turn keeps the luma
    assert not torch.allclose(hue_only, muted, atol=0.01)


def test_random_grayscale_makes_channels_equal_in_about_p_of_the_batch():
    out = random_grayscale(torch.rand(400, 3, 4, 4), gen(), p=0.2)
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 50 < gray.sum().item() < 110


def test_crop_with_an_aspect_ratio_varies_width_and_height_apart():
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    out = random_resized_crop(x, (0.3, 0.3), gen(), ratio=(1 / 2, 2))
    rows, cols = (out[:, 0] > 0.5).any(2).sum(1), (out[:, 0] > 0.5).any(1).sum(1)
    assert len(set((rows - cols).tolist())) > 5
