"""Weights on disk as safetensors with a JSON header: safe to load, and self-describing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.models.nets import Classifier, ConvEncoder, MLPEncoder, build_encoder


def save(path: Path, module: nn.Module, meta: dict[str, Any]) -> None:
    """Write module's weights and `meta` (must hold the encoder `spec`) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"prefine": json.dumps(meta, sort_keys=True)})


def load(path: Path) -> tuple[dict, dict[str, Any]]:
    """(state dict, meta) of a file written by save()."""
    if not Path(path).is_file():
        raise PrefineError(f"{path}: no weights here; run the stage that makes it")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["prefine"])
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, json ValueError
        raise PrefineError(f"{path}: not a Prefine weights file ({exc.__class__.__name__}: {exc})") from None
    return state, meta


def load_encoder(path: Path) -> tuple[ConvEncoder | MLPEncoder, dict[str, Any]]:
    state, meta = load(path)
    encoder = build_encoder(meta["spec"])
    encoder.load_state_dict(state)
    return encoder, meta


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    state, meta = load(path)
    model = Classifier(build_encoder(meta["spec"]), len(meta["classes"]))
    model.load_state_dict(state)
    return model, meta
