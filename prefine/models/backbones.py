"""Standard backbones by name: torchvision architectures without their classifier, as encoders
(uint8-scaled images [N, C, S, S] -> features [N, dim]). Built with weights=None: nothing is
downloaded; start from weights you have with pretrain.init / finetune.init.

- Small images (below SMALL_IMAGE px): the stem that shrinks an image 4x at once (ResNet's 7x7
  stride-2 conv and max-pool, ConvNeXt's 4x4 patchify) becomes one 3x3 stride-1 conv, and ViT
  patches are SMALL_PATCH px, so 28-60 px images keep their detail (as done for CIFAR).
- Channels: 1 or 3; the first conv is rebuilt (and initialised as torchvision does) when not 3.
- `blocks`: the network's stages in order, stem first; `finetune.strategy: partial` trains the
  last `finetune.unfreeze` of them. They are views into the network, not extra weights.
- State-dict keys are torchvision's under `net.`, so torchvision weights load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from prefine.errors import PrefineError

SMALL_IMAGE = 64
SMALL_PATCH = 4
VIT_PATCH = 16


class Backbone(nn.Module):
    """A torchvision network whose classifier is the identity: forward gives pooled features."""

    def __init__(self, net: nn.Module, blocks: Sequence[nn.Module], dim: int) -> None:
        super().__init__()
        self.net = net
        self._blocks = tuple(blocks)  # a tuple is not registered: no weight is listed twice
        self.dim = dim

    @property
    def blocks(self) -> tuple[nn.Module, ...]:
        return self._blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _models():
    """torchvision.models, imported when a backbone is built: importing it loads torch._dynamo
    (1.3 s), which every stage that builds no torchvision network would pay for nothing."""
    import torchvision.models

    return torchvision.models


def _kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    """ResNet's init of a conv it builds."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _trunc_normal(conv: nn.Conv2d, std: float) -> nn.Conv2d:
    """ConvNeXt's and ViT's init of a first conv they build."""
    nn.init.trunc_normal_(conv.weight, std=std)
    nn.init.zeros_(conv.bias)
    return conv


def _small_stem(channels: int, width: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(channels, width, 3, 1, padding=1, bias=bias)


def _resnet(name: str) -> Callable[[int, int], Backbone]:
    def build(channels: int, size: int) -> Backbone:
        net = getattr(_models(), name)(weights=None)
        if size < SMALL_IMAGE:
            net.conv1, net.maxpool = _kaiming(_small_stem(channels, 64, bias=False)), nn.Identity()
        elif channels != 3:
            net.conv1 = _kaiming(nn.Conv2d(channels, 64, 7, 2, padding=3, bias=False))
        dim, net.fc = net.fc.in_features, nn.Identity()
        stem = nn.Sequential(net.conv1, net.bn1)
        return Backbone(net, [stem, net.layer1, net.layer2, net.layer3, net.layer4], dim)

    return build


def _convnext_tiny(channels: int, size: int) -> Backbone:
    net = _models().convnext_tiny(weights=None)
    if size < SMALL_IMAGE:
        net.features[0][0] = _trunc_normal(_small_stem(channels, 96, bias=True), 0.02)
    elif channels != 3:
        net.features[0][0] = _trunc_normal(nn.Conv2d(channels, 96, 4, 4), 0.02)
    dim, net.classifier[2] = net.classifier[2].in_features, nn.Identity()
    f = net.features
    stages = [f[0], f[1], nn.Sequential(f[2], f[3]), nn.Sequential(f[4], f[5]), nn.Sequential(f[6], f[7], net.classifier[0])]
    return Backbone(net, stages, dim)


def _vit_b_16(channels: int, size: int) -> Backbone:
    patch = SMALL_PATCH if size < SMALL_IMAGE else VIT_PATCH
    if size % patch:
        raise PrefineError(f"ingest.image_size = {size}: vit_b_16 needs a multiple of {patch} (its patch size)")
    net = _models().VisionTransformer(size, patch, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    if channels != 3:
        net.conv_proj = _trunc_normal(nn.Conv2d(channels, 768, patch, patch), math.sqrt(1 / (channels * patch**2)))
    dim, net.heads = net.hidden_dim, nn.Identity()
    return Backbone(net, [net.conv_proj, *net.encoder.layers, net.encoder.ln], dim)


BUILDERS: dict[str, Callable[[int, int], Backbone]] = {
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "convnext_tiny": _convnext_tiny,
    "vit_b_16": _vit_b_16,
}


def build_backbone(kind: str, channels: int, image_size: int) -> Backbone:
    """The backbone `kind` (a key of BUILDERS) for images of `channels` x image_size^2."""
    return BUILDERS[kind](channels, image_size)
