"""Flow parameters -> params.yaml, like `dvc exp run -S`: the workspace file is edited (comments
kept) so DVC sees the new values and dvc.lock records them; invalid values change nothing."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from ruamel.yaml import YAML

from prefine.params import ParamsError, parse


def assign(tree: dict, dotted: str) -> None:
    """Set one `key.path=value` (the value parsed as YAML) in a params tree."""
    key, sep, raw = dotted.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {dotted!r}: expected key.path=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted!r}: '{part}' is not a section")
    node[leaf] = yaml.safe_load(raw)


def apply(repo: Path, profile: str | None = None, overrides: list[str] | None = None) -> bool:
    """Set `profile` and each `key.path=value` in repo/params.yaml; return whether it changed."""
    if profile is None and not overrides:
        return False
    path = Path(repo) / "params.yaml"
    rt = YAML()
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    original = path.read_text()
    tree = rt.load(original)
    if profile is not None:
        tree["profile"] = profile
    for item in overrides or []:
        assign(tree, item)
    buffer = io.StringIO()
    rt.dump(tree, buffer)
    text = buffer.getvalue()
    parse(yaml.safe_load(text), str(path))  # raises ParamsError before anything is written
    if text != original:
        path.write_text(text)
    return text != original
