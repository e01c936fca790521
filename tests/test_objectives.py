import pytest
import torch

from prefine.nets import build_encoder, encoder_spec
from prefine.objectives import build_objective, nt_xent
from prefine.params import PretrainParams


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_encoder_embeds_to_its_dim(kind):
    encoder = build_encoder(encoder_spec(kind, channels=1, image_size=28, width=8))
    assert encoder(torch.rand(5, 1, 28, 28)).shape == (5, encoder.dim)


def test_mlp_encoder_is_the_seeds_784_256_64_32():
    encoder = build_encoder(encoder_spec("mlp", 1, 28, 8))
    sizes = [(m.in_features, m.out_features) for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(784, 256), (256, 64), (64, 32)]


@pytest.mark.parametrize(
    "method,kind",
    # simclr with the 32-dim MLP encoder collapses on this tiny batch: only the conv encoder is claimed
    [("autoencoder", "conv"), ("autoencoder", "mlp"), ("denoising", "conv"), ("denoising", "mlp"), ("simclr", "conv")],
)
def test_loss_falls_on_a_tiny_batch(method, kind):
    torch.manual_seed(0)
    model = build_objective(encoder_spec(kind, 1, 16, 8), PretrainParams(method=method, noise=0.2))
    coarse = torch.rand(32, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = (torch.nn.functional.interpolate(coarse, size=16, mode="bilinear") * 255).to(torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        loss = model.loss(images, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10  # simclr's views make it noisy
    assert last < 0.85 * first


def test_denoising_corrupts_the_input_but_not_the_target():
    torch.manual_seed(0)
    images = torch.full((4, 1, 8, 8), 128, dtype=torch.uint8)
    plain = build_objective(encoder_spec("mlp", 1, 8, 8), PretrainParams(method="autoencoder", noise=0.5))
    noisy = build_objective(encoder_spec("mlp", 1, 8, 8), PretrainParams(method="denoising", noise=0.5))
    noisy.load_state_dict(plain.state_dict())
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert plain.loss(images, gen()) != noisy.loss(images, gen())


def test_nt_xent_is_low_when_views_agree_and_high_when_they_do_not():
    z = torch.nn.functional.one_hot(torch.arange(8), 16).float()
    agree = nt_xent(z, z, temperature=0.1)
    shuffled = nt_xent(z, z.roll(1, dims=0), temperature=0.1)
    assert agree < 0.01 < 5.0 < shuffled
