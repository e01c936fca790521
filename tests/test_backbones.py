"""Standard backbones by name (one training step each at a small size), and starting an encoder
from a weights file a user brings: torchvision's layout, safetensors, never a pickle."""

import pickle
from functools import cache
from typing import get_args

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from prefine.errors import PrefineError
from prefine.models import weights
from prefine.models.backbones import BUILDERS, build_backbone
from prefine.models.nets import build_encoder, encoder_spec
from prefine.models.objectives import build_objective
from prefine.params import PretrainParams
from prefine.training import finetuning


@cache
def small(kind: str, channels: int) -> torch.nn.Module:
    """A backbone for 16 px images, built once per module (a ViT-B takes a second to initialise)."""
    torch.manual_seed(0)
    return build_encoder(encoder_spec(kind, channels, 16, 8))


@pytest.mark.parametrize("kind,channels", [("resnet18", 1), ("resnet50", 3), ("convnext_tiny", 3), ("vit_b_16", 1)])
def test_each_backbone_takes_a_training_step_on_small_images(kind, channels):
    encoder = small(kind, channels)
    x = torch.rand(2, channels, 16, 16)
    z = encoder(x)
    assert z.shape == (2, encoder.dim)
    before = [p.clone() for p in encoder.parameters()]
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    z.pow(2).mean().backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert len(encoder.blocks) >= 5
    named = {id(p) for p in encoder.parameters()}
    assert all(id(p) in named for block in encoder.blocks for p in block.parameters())


def test_the_usual_stem_from_64_pixels_and_the_small_one_below():
    assert build_backbone("resnet18", 3, 64).net.conv1.kernel_size == (7, 7)
    small = build_backbone("resnet18", 3, 60).net
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    with pytest.raises(PrefineError, match="ingest.image_size = 72: vit_b_16 needs a multiple of 16"):
        build_backbone("vit_b_16", 3, 72)


def test_params_offer_exactly_the_built_backbones():
    assert set(get_args(PretrainParams.model_fields["encoder"].annotation)) == {"conv", "mlp", *BUILDERS}


@pytest.mark.parametrize("method", ["autoencoder", "gan"])
def test_methods_that_mirror_the_encoder_refuse_a_backbone_naming_the_key(method):
    spec = encoder_spec("resnet18", 3, 32, 8)
    with pytest.raises(PrefineError, match=rf"pretrain.encoder = resnet18: pretrain.method = {method} needs"):
        build_objective(spec, PretrainParams(method=method, encoder="resnet18"))


def test_ssl_heads_work_on_any_backbone():
    model = build_objective(encoder_spec("resnet18", 3, 16, 8), PretrainParams(method="vicreg", expander=16))
    loss = model.loss(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_torchvision_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    theirs = torchvision.models.resnet18(weights=None)  # as a user's resnet18-f37072fd.pth holds it
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    encoder = build_encoder(encoder_spec("resnet18", 3, 64, 8))
    weights.load_into(encoder, tmp_path / "resnet18.pth", "pretrain.init")
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[name.removeprefix("net.")]), name


def test_finetune_init_starts_the_classifier_from_a_safetensors_file(tmp_path):
    spec = encoder_spec("conv", 1, 16, 4)
    torch.manual_seed(2)
    source = build_encoder(spec)
    save_file(source.state_dict(), str(tmp_path / "mine.safetensors"))
    weights.save(tmp_path / "enc.safetensors", build_encoder(spec), {"spec": spec, "method": "simclr"})
    model = finetuning.start("full", tmp_path / "enc.safetensors", 2, 0, init=tmp_path / "mine.safetensors")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.encoder.state_dict().items())
    scratch = finetuning.start(finetuning.SCRATCH, spec, 2, 0)
    assert torch.equal(model.head.weight, scratch.head.weight)


class Payload:
    """What an untrusted pickle could carry instead of tensors."""


def test_a_pickle_is_refused_and_nothing_is_run(tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"conv1.weight": Payload()}))
    encoder = build_encoder(encoder_spec("conv", 1, 16, 4))
    with pytest.raises(PrefineError, match=r"finetune.init = .*evil.pt: refused: .*weights_only=True.*convert it to safetensors"):
        weights.load_into(encoder, tmp_path / "evil.pt", "finetune.init")


def test_weights_of_another_architecture_are_named(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    encoder = build_encoder(encoder_spec("resnet18", 1, 64, 8))  # one channel: conv1 differs
    with pytest.raises(PrefineError, match=r"net.conv1.weight has shape \[64, 3, 7, 7\], the encoder's is \[64, 1, 7, 7\]"):
        weights.load_into(encoder, tmp_path / "r18.pth", "pretrain.init")
    with pytest.raises(PrefineError, match="tensors are missing"):
        weights.load_into(build_encoder(encoder_spec("conv", 1, 16, 4)), tmp_path / "r18.pth", "pretrain.init")


def test_partial_fine_tuning_of_a_vit_trains_its_last_blocks_only():
    encoder = small("vit_b_16", 1)
    model = finetuning.build(encoder, 2, "partial", unfreeze=2)
    trained = {id(p) for block in encoder.blocks[-2:] for p in block.parameters()}
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == trained
    assert not encoder.net.class_token.requires_grad
    model.train()
    assert not encoder.blocks[0].training and encoder.blocks[-1].training
