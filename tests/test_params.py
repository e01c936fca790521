from pathlib import Path

import pytest
import yaml

from prefine.params import (
    ParamsError,
    apply_profile,
    load,
    load_profiles,
    matching_profiles,
    parse,
    resolve,
)

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
REPO_PROFILES = REPO_PARAMS.with_name("profiles.yaml")


def repo_params() -> dict:
    return yaml.safe_load(REPO_PARAMS.read_text())


def test_repo_params_are_valid_for_every_profile():
    profiles = load_profiles(REPO_PROFILES)
    assert {"default", "quick", "full"} <= set(profiles)
    for name in profiles:
        raw = repo_params()
        apply_profile(raw, name, profiles)
        parse(raw)


def test_default_restores_every_key_another_profile_sets():
    """Switching back to `default` must undo any profile: it sets each key the others set."""
    profiles = load_profiles(REPO_PROFILES)
    default = {(s, k) for s, values in profiles["default"].items() for k in values}
    for name, sections in profiles.items():
        assert {(s, k) for s, values in sections.items() for k in values} <= default, name
    assert matching_profiles(repo_params(), profiles) == ["default"]  # params.yaml ships as default


def test_override_wins_over_the_profile(tmp_path):
    raw = repo_params()
    resolve(raw, "quick", ["pretrain.epochs=3", "finetune.steps=2"], REPO_PROFILES)
    params = parse(raw)
    assert (params.pretrain.epochs, params.finetune.steps) == (3, 2)
    assert params.pretrain.width == load_profiles(REPO_PROFILES)["quick"]["pretrain"]["width"]


@pytest.mark.parametrize("value", [True, "3", 2.5])
def test_an_epoch_count_is_an_integer_not_a_bool_or_string(value):
    raw = repo_params()
    raw["pretrain"]["epochs"] = value
    with pytest.raises(ParamsError, match=r"pretrain\.epochs"):
        parse(raw)


def test_profile_is_not_a_param_and_says_where_profiles_live():
    with pytest.raises(ParamsError, match=r"'profile' is not a param: profiles live in profiles.yaml"):
        parse({**repo_params(), "profile": "quick"})


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
        resolve(repo_params(), "nope", None, REPO_PROFILES)


def test_typo_inside_a_profile_names_it(tmp_path):
    profiles = yaml.safe_load(REPO_PROFILES.read_text())
    profiles["quick"]["pretrain"]["epocs"] = 1
    (tmp_path / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    with pytest.raises(ParamsError, match="profile 'quick'.*pretrain.epocs"):
        load_profiles(tmp_path / "profiles.yaml")


def test_load_reports_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load(tmp_path / "params.yaml")
