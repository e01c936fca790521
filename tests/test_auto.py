"""`finetune.strategy: auto`: cross-validation on the labeled budget picks the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefine.data.store import ImageSet
from prefine.models import weights
from prefine.models.nets import build_encoder, encoder_spec
from prefine.params import FinetuneParams, ParamsError, parse
from prefine.training import auto


def test_folds_are_disjoint_cover_every_row_and_hold_out_every_class() -> None:
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    held_out = auto.folds(labels, 3, seed=0)
    rows = torch.cat(held_out)
    assert sorted(rows.tolist()) == list(range(len(labels)))
    for fold in held_out:
        assert set(labels[fold].tolist()) == {0, 1, 2}  # every class in every held-out fold
    assert [f.tolist() for f in held_out] == [f.tolist() for f in auto.folds(labels, 3, seed=0)]  # seeded
    assert [f.tolist() for f in held_out] != [f.tolist() for f in auto.folds(labels, 3, seed=1)]


def _labeled(per_class: int) -> ImageSet:
    """Two classes a linear model separates at once: dark vs bright images."""
    gen = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (per_class, 1, 8, 8), generator=gen, dtype=torch.uint8)
    bright = torch.randint(190, 255, (per_class, 1, 8, 8), generator=gen, dtype=torch.uint8)
    return ImageSet(torch.cat([dark, bright]), torch.tensor([0] * per_class + [1] * per_class), ["dark", "bright"])


def _encoder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    encoder = tmp_path / "encoder.safetensors"
    spec = encoder_spec("conv", 1, 8, width=4)
    weights.save(encoder, build_encoder(spec), {"spec": spec})
    return encoder


@pytest.mark.parametrize("pool", [True, False])
def test_choose_scores_every_strategy_on_held_out_folds_and_keeps_the_budget(tmp_path: Path, one_thread,
                                                                            pool: bool) -> None:
    unlabeled = _unlabeled(_labeled(20)) if pool else None
    p = FinetuneParams(strategy="auto", steps=30, batch_size=8, mu=2, auto_folds=3, auto_budget=2.0)
    chosen, record = auto.choose(_encoder(tmp_path), _labeled(6), p, seed=0, device=torch.device("cpu"),
                                 unlabeled=unlabeled)
    considered = ["propagate", "linear", "partial", "full"] if pool else ["linear", "partial", "full"]
    assert list(record["cv_accuracy"]) == considered  # propagate only when there is a pool to propagate to
    assert all(0.0 <= s <= 1.0 for s in record["cv_accuracy"].values())
    best = max(record["cv_accuracy"].values())
    assert best - record["cv_accuracy"][record["choice"]] <= record["cv_gap_se"][record["choice"]]
    units = 5 if pool else 2  # partial 1, full 1, propagate 1 + mu (a labeled batch and mu pool batches)
    assert record["folds"] == 3 and record["cv_steps"] == round(30 * 2.0 / (units * 3))
    assert chosen.strategy == record["choice"] and chosen.steps == 30


def test_cv_fits_take_the_real_steps_when_the_budget_allows(tmp_path: Path, one_thread) -> None:
    p = FinetuneParams(strategy="auto", steps=6, batch_size=8, auto_folds=2, auto_budget=50.0)
    _, record = auto.choose(_encoder(tmp_path), _labeled(4), p, seed=0, device=torch.device("cpu"))
    assert record["cv_steps"] == 6  # never more than the run it stands for


def _hits(*bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in "".join(bits)])


def test_pick_prefers_the_earlier_strategy_the_held_out_images_cannot_tell_from_the_best() -> None:
    # of 20 images, b is right on 2 that a gets wrong, a on 1 that b gets wrong: 0.05 ahead, within the
    # paired standard error (0.088), which only the images the two disagree on move
    near = {"a": _hits("1" * 15, "00", "1", "00"), "b": _hits("1" * 15, "11", "0", "00")}
    choice, scores, errors = auto.pick(near)
    assert choice == "a" and scores == {"a": 0.8, "b": 0.85} and errors["b"] == 0.0
    assert errors["a"] == pytest.approx(0.0881, abs=1e-4)
    # 8 images of 20 ahead (0.40) is beyond one standard error (0.112): the best one is taken
    far = {"a": _hits("1" * 8, "0" * 12), "b": _hits("1" * 16, "0000")}
    assert auto.pick(far)[0] == "b"
    # equal scores on different images: the earlier one
    assert auto.pick({"a": _hits("10"), "b": _hits("01")})[0] == "a"


def _unlabeled(data: ImageSet) -> ImageSet:
    return ImageSet(data.images, torch.full((len(data),), -1), data.classes)


def test_the_cv_budget_counts_the_images_each_step_trains() -> None:
    assert [auto.cost(s, mu=3) for s in auto.GRID] == [4.0, 0.0, 1.0, 1.0]


def test_one_label_per_class_cannot_be_cross_validated_and_says_so(tmp_path: Path) -> None:
    chosen, record = auto.choose(_encoder(tmp_path), _labeled(1), FinetuneParams(strategy="auto"), 0,
                                 torch.device("cpu"))
    assert chosen.strategy == "full" and "too few to cross-validate" in record["reason"]


def test_auto_params_are_checked() -> None:
    with pytest.raises(ParamsError, match="finetune.auto_folds"):
        parse({"finetune": {"strategy": "auto", "auto_folds": 1}})
    assert parse({"finetune": {"strategy": "auto"}}).finetune.strategy == "auto"
