import pytest
import torch

from prefine.data.augment import (
    random_brightness_contrast,
    random_hflip,
    random_resized_crop,
    random_shift,
    two_views,
)
from prefine.data.store import ImageSet
from prefine.errors import PrefineError
from prefine.evaluate.probe import probe_head
from prefine.models import weights
from prefine.models.nets import build_encoder, encoder_spec
from prefine.params import FinetuneParams
from prefine.training import finetuning

SPEC = encoder_spec("conv", 1, 16, 4)


def labeled(n_per_class: int = 8) -> ImageSet:
    """Two classes that differ in brightness: learnable in a few steps."""
    gen = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (n_per_class, 1, 16, 16), generator=gen)
    light = torch.randint(180, 256, (n_per_class, 1, 16, 16), generator=gen)
    images = torch.cat([dark, light]).to(torch.uint8)
    return ImageSet(images, torch.tensor([0] * n_per_class + [1] * n_per_class), ["dark", "light"])


def test_shift_moves_content_and_keeps_shape():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum(dim=(1, 2, 3)) == 1.0)
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in out}
    assert len(positions) > 5 and all(2 <= r <= 6 and 2 <= c <= 6 for r, c in positions)


def test_flip_mirrors_about_half_the_batch():
    x = torch.arange(8.0).repeat(200, 1, 8, 1)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 7.0).sum().item()
    assert 60 < flipped < 140 and torch.equal(out[out[:, 0, 0, 0] == 7.0], x[:1].flip(3).expand(flipped, -1, -1, -1))


def test_crop_resize_zooms_each_image_by_its_own_amount():
    x = torch.zeros(32, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0  # a centred square
    out = random_resized_crop(x, (0.25, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    sizes = (out > 0.5).sum(dim=(1, 2, 3))
    assert sizes.max() > 16 and len(set(sizes.tolist())) > 3  # zoomed in, by differing amounts


def test_brightness_contrast_stays_in_range_and_varies_per_image():
    x = torch.rand(16, 1, 8, 8)
    out = random_brightness_contrast(x, 0.4, torch.Generator().manual_seed(0))
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert len(set((out - x).mean(dim=(1, 2, 3)).round(decimals=4).tolist())) > 8


def test_two_views_differ_from_each_other():
    x = torch.rand(8, 1, 16, 16)
    a, b = two_views(x, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == x.shape and not torch.allclose(a, b)


def test_linear_probe_keeps_the_encoder_and_its_batchnorm_statistics():
    torch.manual_seed(0)
    encoder = build_encoder(SPEC)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = finetuning.build(encoder, 2, "linear")
    finetuning.train(model, labeled(), FinetuneParams(steps=20, batch_size=8), "linear", 0, torch.device("cpu"))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("strategy", ["full", "scratch"])
def test_full_and_scratch_learn_a_separable_task(strategy):
    torch.manual_seed(0)
    model = finetuning.build(build_encoder(SPEC), 2, strategy)
    data = labeled()
    history = finetuning.train(model, data, FinetuneParams(steps=40, batch_size=8, lr=0.01), strategy, 0, torch.device("cpu"))
    assert history[-1]["loss"] < history[0]["loss"]
    model.eval()
    assert (model(data.images.float() / 255).argmax(1) == data.labels).float().mean() == 1.0


def test_linear_fits_the_head_without_steps_and_logs_one_record():
    torch.manual_seed(0)
    model = finetuning.build(build_encoder(SPEC), 2, "linear")
    data, logged = labeled(), []
    history = finetuning.train(model, data, FinetuneParams(steps=10_000, batch_size=8), "linear", 0,
                               torch.device("cpu"), on_epoch=logged.append)
    assert history == logged and len(history) == 1 and history[0]["step"] == 0
    assert history[0]["train_accuracy"] == 1.0 and history[0]["loss"] < 0.693  # better than a coin
    model.eval()
    assert torch.equal(model(data.images.float() / 255).argmax(1), data.labels)


def test_full_gives_the_encoder_the_scaled_learning_rate():
    model = finetuning.build(build_encoder(SPEC), 2, "full")
    groups = finetuning.optimizer_for(model, FinetuneParams(lr=0.01, encoder_lr_scale=0.1), "full").param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])


@pytest.mark.parametrize("unfreeze,trained", [(1, [False, False, True]), (2, [False, True, True]), (9, [True, True, True])])
def test_partial_trains_only_the_last_blocks(unfreeze, trained):
    torch.manual_seed(0)
    model = finetuning.build(build_encoder(SPEC), 2, "partial", unfreeze)
    before = [{k: v.clone() for k, v in block.state_dict().items()} for block in model.encoder.blocks]
    p = FinetuneParams(steps=10, batch_size=8, strategy="partial", unfreeze=unfreeze)
    finetuning.train(model, labeled(), p, "partial", 0, torch.device("cpu"))
    changed = [
        any(not torch.equal(v, old[k]) for k, v in block.state_dict().items())  # weights or BN statistics
        for block, old in zip(model.encoder.blocks, before)
    ]
    assert changed == trained


def few_and_pool() -> tuple[ImageSet, ImageSet, ImageSet]:
    """Two labeled images per class, the whole set unlabeled, and the whole set with its labels:
    a recipe that learns from the pool generalizes from the four."""
    pool = labeled(64)
    few = ImageSet(torch.cat([pool.images[:2], pool.images[-2:]]), torch.tensor([0, 0, 1, 1]), pool.classes)
    return few, ImageSet(pool.images, torch.full((len(pool),), -1), pool.classes), pool


def test_semisup_learns_from_pseudo_labels_on_the_unlabeled_pool():
    """Two labeled images per class; the unlabeled pool is what makes the head generalize."""
    torch.manual_seed(0)
    few, unlabeled, pool = few_and_pool()
    p = FinetuneParams(steps=30, batch_size=4, lr=0.01, strategy="semisup", mu=4, threshold=0.7)
    model = finetuning.build(build_encoder(SPEC), 2, "semisup")
    history = finetuning.train(model, few, p, "semisup", 0, torch.device("cpu"), unlabeled=unlabeled)
    assert history[-1]["confident"] > 0.5  # most of the pool got a pseudo-label by the end
    model.eval()
    assert (model(pool.images.float() / 255).argmax(1) == pool.labels).float().mean() > 0.9


@pytest.mark.parametrize("strategy", finetuning.POOLED)
def test_a_pool_strategy_without_an_unlabeled_pool_is_a_clear_error(strategy):
    model = finetuning.build(build_encoder(SPEC), 2, strategy)
    with pytest.raises(PrefineError, match=f"{strategy} needs unlabeled images"):
        finetuning.train(model, labeled(), FinetuneParams(strategy=strategy), strategy, 0, torch.device("cpu"))


def test_budget_is_counted_in_steps():
    assert finetuning.epochs_for(100, FinetuneParams(steps=600, batch_size=64)) == 600
    assert finetuning.epochs_for(1000, FinetuneParams(steps=600, batch_size=64)) == 40


def test_classifier_weights_round_trip_through_safetensors(tmp_path):
    model = finetuning.build(build_encoder(SPEC), 2, "full")
    weights.save(tmp_path / "c.safetensors", model, {"spec": SPEC, "classes": ["dark", "light"]})
    back, meta = weights.load_classifier(tmp_path / "c.safetensors")
    assert meta["classes"] == ["dark", "light"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key])


def test_a_pretrained_run_and_its_scratch_twin_start_from_the_same_head(tmp_path):
    torch.manual_seed(1)
    weights.save(tmp_path / "enc.safetensors", build_encoder(SPEC), {"spec": SPEC, "method": "simclr"})
    pretrained = finetuning.start("full", tmp_path / "enc.safetensors", 2, seed=0)
    scratch = finetuning.start(finetuning.SCRATCH, SPEC, 2, seed=0)
    assert torch.equal(pretrained.head.weight, scratch.head.weight)
    assert not torch.equal(pretrained.encoder.blocks[0][0].weight, scratch.encoder.blocks[0][0].weight)


@pytest.mark.parametrize("strategy,head_init,starts_as_probe", [
    ("full", "probe", True), ("partial", "probe", True), ("full", "random", False),
    (finetuning.SCRATCH, "probe", False),  # the twin's head is random whatever head_init says
])
def test_the_head_starts_as_the_probe_only_for_a_pretrained_run_that_asks(strategy, head_init, starts_as_probe):
    torch.manual_seed(0)
    model = finetuning.build(build_encoder(SPEC), 2, strategy)
    random_head = model.head.weight.detach().clone()
    probed = finetuning.build(build_encoder(SPEC), 2, strategy)
    probed.load_state_dict(model.state_dict())
    probe_head(probed, labeled(), torch.device("cpu"))
    assert not torch.allclose(probed.head.weight, random_head)
    p = FinetuneParams(steps=1, batch_size=8, lr=1e-12, head_init=head_init)  # one step that moves nothing
    finetuning.train(model, labeled(), p, strategy, 0, torch.device("cpu"))
    expected = probed.head.weight if starts_as_probe else random_head
    assert torch.allclose(model.head.weight, expected, atol=1e-6)
