"""params.yaml schema: one source of truth for every knob, checked before any work starts.

A profile (``profile: quick``) overlays ``profiles.<name>`` on the sections, so DVC still sees
plain params (``profile``, ``profiles`` and each section) and reruns what depends on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefine.errors import PrefineError

PARAMS_FILE = Path("params.yaml")


class ParamsError(PrefineError):
    """A params.yaml problem, worded for the person who has to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestParams(_Section):
    source: Literal["fashion-mnist", "folder", "manifest"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    root: str | None = None
    classes: list[str] | None = None
    image_size: int = Field(28, ge=8, le=512, multiple_of=4)
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1)


class PretrainParams(_Section):
    method: Literal["autoencoder", "denoising", "simclr"] = "simclr"
    encoder: Literal["conv", "mlp"] = "conv"
    width: int = Field(32, ge=4, le=512)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.002, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    noise: float = Field(0.3, ge=0.0, le=1.0)
    temperature: float = Field(0.5, gt=0.0, le=10.0)


class CheckpointParams(_Section):
    knn_k: int = Field(10, ge=1)


class FinetuneParams(_Section):
    labels_per_class: int = Field(100, ge=1)
    strategy: Literal["linear", "full"] = "full"
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.003, gt=0.0, le=1.0)
    encoder_lr_scale: float = Field(1.0, ge=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    shift: int = Field(2, ge=0, le=8)
    flip: bool = True


class RegistryParams(_Section):
    """The model registry's promotion gate and publishing (read by flows/, not by any DVC stage)."""

    metric: Literal["accuracy", "macro_f1"] = "accuracy"  # of the pretrained classifier on data/test
    margin: float = Field(0.005, ge=0.0)  # a new version must beat prod by at least this to be promoted
    commit: bool = True  # commit dvc.lock, params and metrics so the version has a commit of its own
    push: bool = True  # `dvc push` the version's files to `remote`
    remote: str = "prefine"  # DVC remote name; added (to .dvc/config.local) when it doesn't exist
    remote_url: str = "../prefine-storage"  # the folder used when `remote` has to be added


class Params(_Section):
    profile: str = "default"
    seed: int = Field(0, ge=0)
    ingest: IngestParams = IngestParams()
    pretrain: PretrainParams = PretrainParams()
    checkpoint: CheckpointParams = CheckpointParams()
    finetune: FinetuneParams = FinetuneParams()
    registry: RegistryParams = RegistryParams()
    profiles: dict[str, dict[str, dict[str, Any]]] = {}


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        section = error["loc"][:-1]
        model = Params
        for part in section:
            model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
        allowed = ", ".join(model.model_fields)
        return f"unknown key '{key}' (allowed here: {allowed})"
    return f"'{key}' = {error['input']!r}: {error['msg'].lower()}"


def _overlay(base: dict[str, Any], profile: dict[str, Any], where: str) -> dict[str, Any]:
    merged = dict(base)
    for section, values in profile.items():
        if section not in Params.model_fields or section in ("profile", "profiles", "seed"):
            raise ParamsError(f"{where}: unknown section '{section}'")
        merged[section] = {**(base.get(section) or {}), **(values or {})}
    return merged


def parse(raw: dict[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate raw params and apply the chosen profile; raise ParamsError naming the key."""
    raw = dict(raw or {})
    profiles = raw.get("profiles") or {}
    name = raw.get("profile", "default")
    if name != "default" and name not in profiles:
        known = ", ".join(dict.fromkeys(["default", *profiles]))
        raise ParamsError(f"{source}: 'profile' = {name!r} is not one of: {known}")
    if name in profiles:
        raw = _overlay(raw, profiles[name] or {}, f"{source}: profiles.{name}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source}: {problems}") from None


def load(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (the profile applied)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    return parse(raw, str(path))
