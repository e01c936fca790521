import copy

import pytest
import torch

from prefine.models.clusters import hog, hog_clusters
from prefine.models.nets import build_encoder, encoder_spec
from prefine.models.objectives import build_objective, nt_xent, vicreg_loss
from prefine.params import PretrainParams


@pytest.mark.parametrize("kind", ["conv", "mlp"])
def test_encoder_embeds_to_its_dim(kind):
    encoder = build_encoder(encoder_spec(kind, channels=1, image_size=28, width=8))
    assert encoder(torch.rand(5, 1, 28, 28)).shape == (5, encoder.dim)


def test_conv_depth_stacks_convs_per_block_and_old_specs_are_depth_one():
    deep = build_encoder(encoder_spec("conv", 1, 28, 8, depth=3))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deep.modules()) == 9
    assert deep(torch.rand(2, 1, 28, 28)).shape == (2, 32)
    old = {k: v for k, v in encoder_spec("conv", 1, 28, 8).items() if k != "depth"}  # weights from before `depth`
    assert build_encoder(old).state_dict().keys() == build_encoder(encoder_spec("conv", 1, 28, 8)).state_dict().keys()


def test_conv_pool_keeps_a_grid_of_the_last_block_and_old_specs_average_globally():
    x = torch.rand(2, 1, 32, 32)  # the last block is 8 x 8: four 4 x 4 cells
    gridded = build_encoder(encoder_spec("conv", 1, 32, 8, pool=2))
    assert gridded(x).shape == (2, 32 * 4)
    # the cells average to the global average: the same features, kept apart by place
    assert torch.allclose(gridded(x).view(2, 32, 4).mean(2), gridded.blocks(x).mean((2, 3)), atol=1e-6)
    old = {k: v for k, v in encoder_spec("conv", 1, 32, 8, pool=2).items() if k != "pool"}  # from before `pool`
    assert build_encoder(old)(x).shape == (2, 32)


def test_mlp_encoder_is_the_seeds_784_256_64_32():
    encoder = build_encoder(encoder_spec("mlp", 1, 28, 8))
    sizes = [(m.in_features, m.out_features) for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [(784, 256), (256, 64), (64, 32)]


def tiny_batch(n: int = 32, size: int = 16) -> torch.Tensor:
    """Smooth random uint8 images: structure to learn, yet a batch that trains in a second."""
    coarse = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return (torch.nn.functional.interpolate(coarse, size=size, mode="bilinear") * 255).to(torch.uint8)


@pytest.mark.parametrize(
    "method,kind",
    # simclr with the 32-dim MLP encoder collapses on this tiny batch: only the conv encoder is claimed
    [("autoencoder", "conv"), ("autoencoder", "mlp"), ("denoising", "conv"), ("denoising", "mlp"), ("simclr", "conv"),
     ("vicreg", "conv"), ("vicreg", "mlp")],
)
def test_loss_falls_on_a_tiny_batch(method, kind):
    # the GAN's sum of two players' losses need not fall: see test_gan_each_player_learns_*
    torch.manual_seed(0)
    # vicreg's expander at twice the batch, as in the pipeline: far wider and 32 images cannot
    # decorrelate it (rank <= 31), which puts a floor under the covariance term
    model = build_objective(encoder_spec(kind, 1, 16, 8), PretrainParams(method=method, noise=0.2, expander=64))
    images = tiny_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    # vicreg's variance hinge starts high (the expander's outputs have a std near 0.3) and is slow
    for _ in range(200 if method == "vicreg" else 100):
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


def test_vicreg_loss_punishes_disagreement_collapse_and_correlation():
    z = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    good = vicreg_loss(z, z)
    assert good < 1.0
    assert vicreg_loss(z, z.roll(1, dims=0)) > good + 10  # the views disagree
    assert vicreg_loss(0.01 * z, 0.01 * z) > good + 10  # collapsed: std far below 1
    correlated = z[:, :1].repeat(1, 16)
    assert vicreg_loss(correlated, correlated) > good + 10


def gan(kind: str = "conv", channels: int = 1, size: int = 16):
    torch.manual_seed(0)
    return build_objective(encoder_spec(kind, channels, size, 8), PretrainParams(method="gan", latent=16))


def discriminator_parameters(model) -> list[torch.nn.Parameter]:
    return [*model.encoder.parameters(), *model.head.parameters()]


@pytest.mark.parametrize("kind,channels,size", [("conv", 1, 16), ("conv", 1, 28), ("conv", 3, 16), ("mlp", 1, 28)])
def test_gan_samples_are_images_of_the_encoders_input_shape_in_0_1(kind, channels, size):
    model = gan(kind, channels, size)
    samples = model.sample(torch.randn(10, model.latent))
    assert samples.shape == (10, channels, size, size)
    assert 0.0 <= samples.min() and samples.max() <= 1.0
    assert model.training  # sampling leaves the mode alone


def test_gan_each_loss_reaches_only_its_own_player():
    """One backward of L_D + L_G equals L_D on D's weights and L_G on G's (simultaneous updates)."""
    model, images = gan(), tiny_batch(8)
    loss, _ = model.loss(images, torch.Generator().manual_seed(1))
    loss.backward()
    z = torch.randn(8, model.latent, generator=torch.Generator().manual_seed(1))
    real, fake = images.float() / 255, model.generator(z)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real_logits, fake_logits = model(torch.cat([real, fake.detach()])).split(8)  # one BatchNorm batch
    d_loss = bce(real_logits, torch.ones(8)) + bce(fake_logits, torch.zeros(8))
    g_loss = bce(model(torch.cat([real, fake]))[8:], torch.ones(8))
    d_params, g_params = discriminator_parameters(model), list(model.generator.parameters())
    expected = torch.autograd.grad(d_loss, d_params) + torch.autograd.grad(g_loss, g_params)
    for param, grad in zip(d_params + g_params, expected):
        assert torch.allclose(param.grad, grad, atol=1e-6)


@pytest.mark.parametrize("kind", ["conv", "mlp"])
@pytest.mark.parametrize("player", ["discriminator", "generator"])
def test_gan_each_player_learns_against_a_frozen_opponent(kind, player):
    """Only `player` steps (the other is frozen); its own loss must fall (G's less: a frozen,
    random D caps how well it can be fooled)."""
    model, images = gan(kind), tiny_batch()
    params = discriminator_parameters(model) if player == "discriminator" else list(model.generator.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=model.betas)
    gen, key = torch.Generator().manual_seed(0), "d_loss" if player == "discriminator" else "g_loss"
    losses = []
    for _ in range(40):
        loss, parts = model.loss(images, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(parts[key].item())
    assert sum(losses[-5:]) / 5 < (0.7 if player == "discriminator" else 0.9) * sum(losses[:5]) / 5


def test_gan_trained_jointly_still_makes_varied_samples():
    model, images = gan(), tiny_batch(16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=model.betas)
    z = torch.randn(16, model.latent, generator=torch.Generator().manual_seed(2))
    before = model.sample(z)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        loss, _ = model.loss(images, gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.sample(z)
    assert (after - before).abs().mean() > 0.01  # the generator moved
    assert after.std(dim=0).mean() > 0.01  # and not onto one image


def test_gan_encoder_is_the_discriminators_trunk():
    model, images = gan(), tiny_batch(8)
    x = images.float() / 255
    before = model(x)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(0.5)
    assert not torch.allclose(model(x), before)  # D reads its input through the encoder
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = model.loss(images, torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert not torch.equal(model.encoder.state_dict()["blocks.0.0.weight"], encoder["blocks.0.0.weight"])


def test_gan_batchnorm_statistics_follow_the_discriminators_batches_once_per_step():
    """The exported encoder's running statistics are those D was trained with (real and fake in
    one batch), updated once per step although D runs twice."""
    model, images = gan(), tiny_batch(8)
    reference = copy.deepcopy(model.encoder)
    fake = model.generator(torch.randn(8, model.latent, generator=torch.Generator().manual_seed(0)))
    model.loss(images, torch.Generator().manual_seed(0))
    reference(torch.cat([images.float() / 255, fake.detach()]))
    for (name, value), expected in zip(model.encoder.named_buffers(), reference.buffers()):
        assert torch.equal(value, expected), name


def two_kinds(n: int = 40, size: int = 16) -> torch.Tensor:
    """Half the images a bright top half, half a bright left half: two kinds of edge."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 40, (n, 1, size, size), generator=gen)
    images[: n // 2, :, : size // 2] += 200
    images[n // 2 :, :, :, : size // 2] += 200
    return images.clamp(max=255).to(torch.uint8)


def test_hog_clusters_separate_kinds_and_repeat_for_a_seed():
    images = two_kinds()
    clusters = hog_clusters(images, 2, seed=0)
    assert clusters.dtype == torch.long and clusters.shape == (40,)

    def splits_the_kinds(c: torch.Tensor) -> bool:
        return len(set(c[:20].tolist())) == 1 and len(set(c[20:].tolist())) == 1 and c[0] != c[-1]

    assert splits_the_kinds(clusters)
    assert torch.equal(hog_clusters(images, 2, seed=0), clusters)
    # large images are shrunk first: the same kinds at 64 px fall apart the same way
    assert splits_the_kinds(hog_clusters(torch.nn.functional.interpolate(images, size=64), 2, seed=0))


def test_hog_sees_edge_orientation_not_brightness_and_takes_the_strongest_channel():
    edge = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    edge[..., 14:] = 200  # a vertical edge: horizontal gradients, orientation 0
    turned = edge.transpose(2, 3)  # a horizontal edge: orientation 90 degrees
    bins = hog(edge).view(-1, 9, 4).sum((0, 2)), hog(turned).view(-1, 9, 4).sum((0, 2))  # blocks: bins x 2 x 2 cells
    assert bins[0].argmax() == 0 and bins[1].argmax() == 4
    assert torch.allclose(hog(edge // 2), hog(edge), atol=1e-5)  # contrast does not matter
    colour = torch.zeros(1, 3, 28, 28, dtype=torch.uint8)
    colour[:, 1] = edge[0, 0]  # the edge only in green
    assert torch.allclose(hog(colour), hog(edge), atol=1e-5)


def test_cluster_objective_learns_to_predict_its_pseudo_classes():
    torch.manual_seed(0)
    images = two_kinds()
    targets = hog_clusters(images, 2, seed=0)
    model = build_objective(encoder_spec("conv", 1, 16, 8), PretrainParams(method="cluster", clusters=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = model.loss(images, gen, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
