from pathlib import Path

import pytest
import yaml

from prefine.params import ParamsError, load, parse

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def repo_params() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text())


def test_repo_params_are_valid_for_every_profile():
    raw = repo_params()
    for profile in raw["profiles"]:
        params = parse({**raw, "profile": profile})
        assert params.profile == profile


def test_profile_overrides_sections():
    raw = repo_params()
    quick = parse({**raw, "profile": "quick"})
    default = parse(raw)
    assert quick.pretrain.epochs == raw["profiles"]["quick"]["pretrain"]["epochs"]
    assert quick.pretrain.lr == default.pretrain.lr  # untouched keys come from the section


def test_typo_names_the_key_and_the_allowed_ones():
    raw = repo_params()
    raw["pretrain"]["epocs"] = 3
    with pytest.raises(ParamsError) as err:
        parse(raw)
    assert "pretrain.epocs" in str(err.value)
    assert "epochs" in str(err.value)


def test_wrong_value_names_key_and_allowed_values():
    raw = repo_params()
    raw["finetune"]["strategy"] = "fancy"
    with pytest.raises(ParamsError, match=r"finetune\.strategy.*'linear'.*'full'"):
        parse(raw)


@pytest.mark.parametrize(
    "section,key,value",
    [("finetune", "labels_per_class", 0), ("ingest", "test_fraction", 1.5), ("pretrain", "epochs", "many")],
)
def test_out_of_range_or_wrong_type_names_the_key(section, key, value):
    raw = repo_params()
    raw[section][key] = value
    with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
        parse(raw)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ParamsError, match="'nope' is not one of: default, quick, full"):
        parse({**repo_params(), "profile": "nope"})


def test_typo_inside_a_profile_names_it():
    raw = repo_params()
    raw["profiles"]["quick"]["pretrian"] = {"epochs": 1}
    with pytest.raises(ParamsError, match="profiles.quick.*pretrian"):
        parse({**raw, "profile": "quick"})


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "params.yaml")
