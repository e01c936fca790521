"""A run's profile and `-S key=value` overrides -> params.yaml, like `dvc exp run -S`: the file
is edited in place (comments kept) so DVC sees the values that train and dvc.lock records them.
Everything is checked first: an invalid value changes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from prefine.params import parse, resolve
from prefine.paths import PARAMS_FILE, PROFILES_FILE


def apply(repo: Path, profile: str | None = None, overrides: list[str] | None = None) -> bool:
    """Write `profile`'s values, then each `key.path=value`, into repo/params.yaml; return
    whether the file changed."""
    if profile is None and not overrides:
        return False
    path = Path(repo) / PARAMS_FILE
    rt = YAML()
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    original = path.read_text()
    tree = rt.load(original)
    resolve(tree, profile, overrides, Path(repo) / PROFILES_FILE)
    buffer = io.StringIO()
    rt.dump(tree, buffer)
    text = buffer.getvalue()
    parse(yaml.safe_load(text), str(path))  # raises ParamsError before anything is written
    if text != original:
        path.write_text(text)
    return text != original
