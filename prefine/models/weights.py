"""Weights on disk as safetensors with a JSON header: safe to load, and self-describing; and
weights a user brings (pretrain.init, finetune.init) loaded without unpickling anything."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.models.nets import Classifier, Encoder, build_encoder

# where a tensor of the encoder may sit in a file: as named (a Prefine encoder), in torchvision's
# layout (a backbone's `net.` dropped), or in a Prefine classifier (under `encoder.`)
KEY_FORMS = (lambda k: k, lambda k: k.removeprefix("net."), lambda k: f"encoder.{k}")


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


def load_encoder(path: Path) -> tuple[Encoder, dict[str, Any]]:
    state, meta = load(path)
    encoder = build_encoder(meta["spec"])
    encoder.load_state_dict(state)
    return encoder, meta


def load_classifier(path: Path) -> tuple[Classifier, dict[str, Any]]:
    state, meta = load(path)
    model = Classifier(build_encoder(meta["spec"]), len(meta["classes"]))
    model.load_state_dict(state)
    return model, meta


def read_tensors(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file named by params `key`: safetensors, or a state dict that
    torch.load(weights_only=True) accepts (tensors and plain containers, never other objects)."""
    path = Path(path)
    if not path.is_file():
        raise PrefineError(f"{key} = {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():  # a pickle's protocol is not worth a warning before refusing it
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, UnpicklingError, a zip error: all "refused"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise PrefineError(f"{key} = {path}: refused: neither safetensors nor a tensors-only torch file "
                           f"(torch.load weights_only=True: {reason}); convert it to safetensors") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise PrefineError(f"{key} = {path}: not a state dict (name -> tensor)")
    return tensors


def load_into(encoder: nn.Module, path: Path, key: str) -> None:
    """Start `encoder` from the weights in `path` (params `key`); every tensor it has must be
    there with its shape (BatchNorm's step counters may be missing); extra ones, such as a
    classifier's head, are ignored."""
    tensors = read_tensors(path, key)
    found, missing = {}, []
    for name, mine in encoder.state_dict().items():
        theirs = next((tensors[form(name)] for form in KEY_FORMS if form(name) in tensors), None)
        if theirs is None:
            missing += [] if name.endswith("num_batches_tracked") else [name]
        elif theirs.shape != mine.shape:
            raise PrefineError(f"{key} = {path}: {name} has shape {list(theirs.shape)}, the encoder's is "
                               f"{list(mine.shape)} (another architecture, channels or image size?)")
        else:
            found[name] = theirs
    if missing:
        raise PrefineError(f"{key} = {path}: {len(missing)} of the encoder's tensors are missing "
                           f"(first: {missing[0]}); are these weights of pretrain.encoder's architecture?")
    encoder.load_state_dict(found, strict=False)
