"""params.yaml schema: one source of truth for every knob, checked before any work starts.

params.yaml holds the values that train, all of them: DVC tracks each stage's sections, so
dvc.lock records exactly what trained. A profile (profiles.yaml) is a named set of values that
`prefine profile NAME` (or `--profile NAME`) writes into params.yaml; `-S key=value` is applied
after it and wins. `default` sets every key that another profile sets, so switching back to it
restores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefine.errors import PrefineError
from prefine.paths import PARAMS_FILE, PROFILES_FILE

DEFAULT_PROFILE = "default"


class ParamsError(PrefineError):
    """A params.yaml problem, worded for the person who has to fix it."""


class _Section(BaseModel):
    # strict: YAML's `true` is not an epoch count, nor "3" a batch size
    model_config = ConfigDict(extra="forbid", strict=True)


class IngestParams(_Section):
    source: Literal["fashion-mnist", "folder", "manifest"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    root: str | None = None
    classes: list[str] | None = None
    image_size: int = Field(28, ge=8, le=512, multiple_of=4)  # stored size: shorter side resized, centre cropped
    channels: Literal[1, 3] = 1
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=1, le=256)  # processes decoding images (null: one per core)


class PretrainParams(_Section):
    method: Literal["autoencoder", "denoising", "simclr", "gan", "vicreg", "cluster"] = "simclr"
    # conv | mlp | a torchvision backbone (models/backbones.py), built untrained
    encoder: Literal["conv", "mlp", "resnet18", "resnet50", "convnext_tiny", "vit_b_16"] = "conv"
    init: str | None = None  # start the encoder from this weights file (safetensors, or a torch state dict)
    width: int = Field(32, ge=4, le=512)
    depth: int = Field(1, ge=1, le=8)  # conv encoder: 3x3 convs per block
    pool: int = Field(2, ge=1, le=7)  # conv encoder: the embedding averages a pool x pool grid of the last block
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.002, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    noise: float = Field(0.3, ge=0.0, le=1.0)
    temperature: float = Field(0.5, gt=0.0, le=10.0)
    latent: int = Field(64, ge=1)  # gan: size of the generator's noise z
    expander: int = Field(512, ge=8)  # vicreg: width of the expander MLP the loss sees
    clusters: int = Field(100, ge=2)  # cluster: k-means pseudo-classes the encoder learns to predict
    workers: int = Field(2, ge=0, le=64)  # DataLoader processes reading batches from disk (0: the trainer reads)
    save_every: int | None = Field(None, ge=1)  # also save the training state every this many steps


class CheckpointParams(_Section):
    knn_k: int = Field(10, ge=1)


class FinetuneParams(_Section):
    labels_per_class: Annotated[int, Field(ge=1)] | Literal["all"] = 100  # all: every labeled training image
    strategy: Literal["linear", "partial", "full", "semisup", "propagate", "auto"] = "full"
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.003, gt=0.0, le=1.0)
    encoder_lr_scale: float = Field(1.0, ge=0.0, le=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    shift: int = Field(2, ge=0, le=8)
    flip: bool = True
    unfreeze: int = Field(1, ge=1)  # partial: how many of the encoder's last blocks train
    mu: int = Field(2, ge=1)  # semisup, propagate: unlabeled images per labeled image in a step
    threshold: float = Field(0.95, ge=0.0, le=1.0)  # semisup: confidence that makes a pseudo-label
    unlabeled_weight: float = Field(1.0, ge=0.0)  # semisup, propagate: weight of the unlabeled loss
    rounds: int = Field(1, ge=1)  # propagate: the pool's labels are propagated again this many times
    init: str | None = None  # fine-tune from this weights file instead of the pretrained encoder
    head_init: Literal["probe", "random"] = "probe"  # the pretrained run's head: the converged probe (LP-FT), or random
    auto_folds: int = Field(3, ge=2, le=10)  # auto: cross-validation folds of the labeled budget
    auto_budget: float = Field(15.0, gt=0.0, le=50.0)  # auto: all CV fits cost at most this many fine-tuning runs


class RegistryParams(_Section):
    """The model registry's promotion gate and publishing (read by flows/, not by any DVC stage)."""

    metric: Literal["accuracy", "macro_f1"] = "accuracy"  # of the pretrained classifier on data/test
    margin: float = Field(0.005, ge=0.0)  # a new version must beat prod by at least this to be promoted
    commit: bool = True  # commit dvc.lock, params and metrics so the version has a commit of its own
    push: bool = True  # `dvc push` the version's files to `remote`
    remote: str = "prefine"  # DVC remote name; added (to .dvc/config.local) when it doesn't exist
    remote_url: str = "../prefine-storage"  # the folder used when `remote` has to be added


class ResourcesParams(_Section):
    """How many devices the training stages use: how they run, not what they learn (the global
    batch stays the same), so not a param of any DVC stage. Read by tasks/stage.py and flows/."""

    devices: int | Literal["auto"] = Field(1)  # per host; auto: every visible GPU (1 on a CPU host)
    nodes: int = Field(1, ge=1)  # hosts in one training run (each runs the stage; see docs/multi-device.md)
    rendezvous: str | None = None  # host:port every node reaches (nodes > 1)
    max_restarts: int = Field(3, ge=0)  # torchrun restarts the group this often when a rank dies

    @field_validator("devices")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1, or auto")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> "ResourcesParams":
        if self.nodes > 1 and not self.rendezvous:
            raise ValueError(f"nodes is {self.nodes}: set rendezvous to a host:port every node reaches")
        return self

    def count(self, gpus: int) -> int:
        """Devices per host on a host with `gpus` visible GPUs (auto: all of them, 1 on a CPU host)."""
        return max(1, gpus) if self.devices == "auto" else self.devices


def _overrides(section: type[_Section], values: dict[str, Any], owned: str, owner: str) -> dict[str, Any]:
    """Check a study's overrides of `section` against its schema now, not hours into the study;
    `owned` is the key the study sets itself (from `owner`)."""
    if owned in values:
        raise ValueError(f"'{owned}' is set by {owner}, not here")
    try:
        return section.model_validate(values).model_dump(include=set(values))
    except ValidationError as exc:
        problems = (f"{'.'.join(map(str, e['loc']))}: {e['msg'].lower()}" for e in exc.errors())
        raise ValueError("; ".join(problems)) from None


class StudyParams(_Section):
    """The label-budget study (flows/study.py, `prefine study`): not a param of any DVC stage."""

    # pretrain.method values to compare
    methods: list[str] = Field(["autoencoder", "denoising", "simclr", "vicreg", "gan"], min_length=1)
    budgets: list[Annotated[int, Field(ge=1)] | Literal["all"]] = Field([1, 5, 10, 50, 100, "all"], min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0, 1, 2], min_length=1)
    out: str = "reports"  # the table, markdown and plot (the cells are DVC experiments)
    pretrain: dict[str, Any] = {}  # overrides of the (profile-resolved) pretrain section
    finetune: dict[str, Any] = {}  # overrides of the (profile-resolved) finetune section

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        known = get_args(PretrainParams.model_fields["method"].annotation)
        if unknown := [m for m in methods if m not in known]:
            raise ValueError(f"unknown method {', '.join(map(repr, unknown))}; one of {', '.join(known)}")
        return methods

    @field_validator("pretrain")
    @classmethod
    def _pretrain_overrides(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _overrides(PretrainParams, values, "method", "study.methods")

    @field_validator("finetune")
    @classmethod
    def _finetune_overrides(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _overrides(FinetuneParams, values, "labels_per_class", "study.budgets")


class Params(_Section):
    seed: int = Field(0, ge=0)
    ingest: IngestParams = IngestParams()
    pretrain: PretrainParams = PretrainParams()
    checkpoint: CheckpointParams = CheckpointParams()
    finetune: FinetuneParams = FinetuneParams()
    registry: RegistryParams = RegistryParams()
    study: StudyParams = StudyParams()
    resources: ResourcesParams = ResourcesParams()

    @model_validator(mode="after")
    def _batches_shareable(self) -> "Params":
        """Each rank trains an equal share of a batch: say so before torchrun starts, not in
        every rank of every restart."""
        ranks = self.resources.nodes * (self.resources.devices if isinstance(self.resources.devices, int) else 1)
        for name, section in (("pretrain", self.pretrain), ("finetune", self.finetune)):
            if section.batch_size < ranks:
                raise ValueError(f"{name}.batch_size {section.batch_size} cannot be shared by {ranks} devices "
                                 "(resources.devices x resources.nodes): raise it or use fewer devices")
        return self


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if not key:  # a rule across sections
        return error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        if key in ("profile", "profiles"):
            return f"'{key}' is not a param: profiles live in {PROFILES_FILE}; switch with `prefine profile NAME`"
        section = error["loc"][:-1]
        model = Params
        for part in section:
            model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
        allowed = ", ".join(model.model_fields)
        return f"unknown key '{key}' (allowed here: {allowed})"
    return f"'{key}' = {error['input']!r}: {error['msg'].lower()}"


def parse(raw: dict[str, Any], source: str = str(PARAMS_FILE)) -> Params:
    """Validate raw params; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(dict(raw or {}))
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ParamsError(f"{source}: {problems}") from None


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of {what}")
    return raw


def load(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse(_read_yaml(path, "sections"), str(path))


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    """profiles.yaml: {name: {section: {key: value}}}, each value checked against the schema."""
    profiles = _read_yaml(path, "profiles")
    for name, sections in profiles.items():
        where = f"{path}: profile '{name}'"
        if not isinstance(sections, dict):
            raise ParamsError(f"{where}: expected a mapping of sections")
        for section, values in sections.items():
            model = Params.model_fields.get(section)
            if model is None or section == "seed" or not isinstance(values, dict):
                raise ParamsError(f"{where}: '{section}' is not a section with keys (sections: "
                                  f"{', '.join(k for k in Params.model_fields if k != 'seed')})")
            try:
                model.annotation.model_validate(values)  # type: ignore[union-attr]
            except ValidationError as exc:
                problems = "; ".join(_describe({**e, "loc": (section, *e["loc"])}) for e in exc.errors())
                raise ParamsError(f"{where}: {problems}") from None
    if DEFAULT_PROFILE not in profiles:
        raise ParamsError(f"{path}: no '{DEFAULT_PROFILE}' profile")
    return profiles


def apply_profile(tree: dict[str, Any], name: str, profiles: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Write profile `name`'s values into a params tree (a plain or a round-trip YAML mapping)."""
    if name not in profiles:
        raise ParamsError(f"profile {name!r} is not one of: {', '.join(profiles)} ({PROFILES_FILE})")
    for section, values in profiles[name].items():
        node = tree.setdefault(section, {})
        for key, value in values.items():
            node[key] = value


def matching_profiles(tree: dict[str, Any], profiles: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The profiles whose every value equals the one in `tree` (params.yaml as read)."""
    return [
        name for name, sections in profiles.items()
        if all((tree.get(section) or {}).get(key) == value
               for section, values in sections.items() for key, value in values.items())
    ]


def assign(tree: dict[str, Any], dotted: str) -> None:
    """Set one `key.path=value` (the value parsed as YAML) in a params tree, like `dvc exp run -S`."""
    key, sep, raw = dotted.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {dotted!r}: expected key.path=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted!r}: '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {dotted!r}: not a YAML value ({exc.__class__.__name__})") from None


def resolve(tree: dict[str, Any], profile: str | None, overrides: list[str] | None, profiles_file: Path) -> None:
    """The one way a run's params are made: the profile's values, then each override (which wins)."""
    if profile is not None:
        apply_profile(tree, profile, load_profiles(profiles_file))
    for item in overrides or []:
        assign(tree, item)


def load_with(root: Path, profile: str | None, overrides: list[str] | None) -> Params:
    """root's params.yaml with `profile` and `key.path=value` overrides applied in memory only
    (a study or a benchmark never edits params.yaml, so it changes nothing DVC tracks)."""
    path = root / PARAMS_FILE
    params = load(path)  # names a missing or broken file
    if profile is None and not overrides:
        return params
    raw = yaml.safe_load(path.read_text())
    resolve(raw, profile, overrides, root / PROFILES_FILE)
    return parse(raw, str(path))
