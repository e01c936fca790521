"""The networks: encoders (conv, the seed's MLP, or a torchvision backbone by name), the
decoders of the small ones, and the classifier.

An encoder is rebuilt from a small JSON-able spec, so exported weights (safetensors) carry
everything needed to load them without pickle. Every encoder has `dim` (its embedding's size)
and `blocks` (its stages in order, which partial fine-tuning unfreezes from the end).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prefine.errors import PrefineError
from prefine.models.backbones import BUILDERS, Backbone, build_backbone
from prefine.params import PretrainParams

EncoderSpec = dict[str, Any]
SMALL_ENCODERS = ("conv", "mlp")  # the ones with a decoder (autoencoders) and a generator (GAN)


def _conv_block(c_in: int, c_out: int, depth: int) -> nn.Sequential:
    """`depth` 3x3 conv + BatchNorm + ReLU layers, flat (depth 1 keeps the keys of older weights)."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                   nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Three conv blocks (width, 2*width, 4*width; `depth` convs each), averaged over a pool x pool
    grid: a 4*width*pool**2 embedding. pool 1 is the global average; pool 2 keeps which quarter of
    the image a feature is in (a collar from a hem), worth +1.7 points of fine-tuned accuracy at
    100 labels per class for no extra compute (docs/results.md)."""

    def __init__(self, channels: int, width: int, depth: int = 1, pool: int = 1) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            _conv_block(channels, width, depth),
            nn.Sequential(nn.MaxPool2d(2), _conv_block(width, 2 * width, depth)),
            nn.Sequential(nn.MaxPool2d(2), _conv_block(2 * width, 4 * width, depth)),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.dim = 4 * width * pool**2
        # channels-last, the layout oneDNN convolves fastest: on a 2-core CPU 1.6-2x the images/s,
        # training and embedding (benchmarks/cpu_layout.py); its state dict keeps the usual layout
        self.to(memory_format=torch.channels_last)
        self.register_state_dict_post_hook(_usual_layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x.contiguous(memory_format=torch.channels_last)))


def _usual_layout(module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """A state dict in the layout safetensors, and anyone's save_file(model.state_dict()), expect."""
    for key, value in state.items():
        if key.startswith(prefix) and not isinstance(value, nn.Parameter):  # keep_vars asks for the params
            state[key] = value.contiguous()


class MLPEncoder(nn.Module):
    """The seed's autoencoder encoder: pixels -> 256 -> 64 -> 32."""

    def __init__(self, channels: int, image_size: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, 256), nn.ReLU()),
            nn.Sequential(nn.Linear(256, 64), nn.ReLU()),
            nn.Sequential(nn.Linear(64, 32)),
        )
        self.dim = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def encoder_spec(kind: str, channels: int, image_size: int, width: int, depth: int = 1, pool: int = 1) -> EncoderSpec:
    return {"kind": kind, "channels": channels, "image_size": image_size, "width": width, "depth": depth,
            "pool": pool}


def spec_for(p: PretrainParams, images: torch.Tensor) -> EncoderSpec:
    """The encoder a pretrain section asks for, sized for images shaped like these ([N, C, H, W]:
    a tensor, or a split on disk)."""
    return encoder_spec(p.encoder, images.shape[1], images.shape[2], p.width, p.depth, p.pool)


Encoder = ConvEncoder | MLPEncoder | Backbone


def build_encoder(spec: EncoderSpec) -> Encoder:
    if spec["kind"] == "conv":  # weights exported before `depth` and `pool` existed have 1 of each
        return ConvEncoder(spec["channels"], spec["width"], spec.get("depth", 1), spec.get("pool", 1))
    if spec["kind"] == "mlp":
        return MLPEncoder(spec["channels"], spec["image_size"])
    if spec["kind"] in BUILDERS:
        return build_backbone(spec["kind"], spec["channels"], spec["image_size"])
    raise ValueError(f"unknown encoder kind {spec['kind']!r}")


def require_small_encoder(spec: EncoderSpec, method: str) -> None:
    """Methods that mirror the encoder (a decoder, a generator) know the small ones only."""
    if spec["kind"] not in SMALL_ENCODERS:
        raise PrefineError(f"pretrain.encoder = {spec['kind']}: pretrain.method = {method} needs pretrain.encoder "
                           f"{' or '.join(SMALL_ENCODERS)} (its decoder mirrors them); use simclr or vicreg with "
                           f"{spec['kind']}")


def mlp_to_image(sizes: tuple[int, int, int], channels: int, image_size: int) -> nn.Sequential:
    """A vector through two hidden ReLU layers (sizes = in, hidden, hidden) to an image in [0, 1]."""
    n_in, h1, h2 = sizes
    return nn.Sequential(
        nn.Linear(n_in, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
        nn.Linear(h2, channels * image_size**2), nn.Sigmoid(), nn.Unflatten(1, (channels, image_size, image_size)),
    )


def build_decoder(spec: EncoderSpec, dim: int) -> nn.Module:
    """Mirror of the encoder: embedding -> image in [0, 1] (sigmoid)."""
    c, size, w = spec["channels"], spec["image_size"], spec["width"]
    if spec["kind"] == "mlp":
        return mlp_to_image((dim, 64, 256), c, size)
    s = size // 4
    return nn.Sequential(
        nn.Linear(dim, 2 * w * s * s), nn.ReLU(), nn.Unflatten(1, (2 * w, s, s)),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.ConvTranspose2d(w, c, 4, 2, 1), nn.Sigmoid(),
    )


class Classifier(nn.Module):
    """An encoder and a linear head over its embedding.

    With frozen_blocks > 0, all of the encoder but its blocks after the first `frozen_blocks`
    keeps its weights and stays in eval mode, so pretrained BatchNorm statistics survive
    fine-tuning (all of it, with frozen_blocks = len(blocks): a linear probe). A backbone's
    weights outside its blocks (a ViT's class token) count as frozen with the first block.
    """

    def __init__(self, encoder: Encoder, classes: int, frozen_blocks: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, classes)
        self.trained = list(encoder.blocks)[frozen_blocks:] if frozen_blocks else None
        if self.trained is not None:
            encoder.requires_grad_(False)
            for block in self.trained:
                block.requires_grad_(True)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.trained is not None:
            self.encoder.eval()
            for block in self.trained:
                block.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float in [0, 1] (the default dtype): the one place pixels are scaled."""
    return images.to(torch.get_default_dtype()).div_(255.0)


def widen(t: torch.Tensor) -> torch.Tensor:
    """An autocast output (bf16/fp16) in float32, for the loss; float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
