"""The house rules, checked: DVC's deps cover what each stage imports, the layers hold, and
dvc.yaml and prefine/paths.py name the same files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from imports import PACKAGES, ROOT, closure, imported_names, is_trivial

from prefine import paths

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def stage_module(stage: dict) -> Path:
    match = re.fullmatch(r"python -m (tasks\.\w+)", stage["cmd"])
    assert match, f"stage cmd {stage['cmd']!r} is not `python -m tasks.<step>`"
    return ROOT.joinpath(*match.group(1).split(".")).with_suffix(".py")


def missing_deps(stage: dict) -> list[str]:
    """Project files the stage's module imports (transitively) that no dep of the stage covers."""
    deps = [ROOT / d.rstrip("/") for d in stage.get("deps", [])]
    needed = [f for f in closure(stage_module(stage)) if not is_trivial(f)]
    return sorted(str(f.relative_to(ROOT)) for f in needed if not any(f == d or d in f.parents for d in deps))


@pytest.mark.parametrize("name", list(STAGES))
def test_dvc_deps_cover_every_module_a_stage_imports(name: str) -> None:
    assert missing_deps(STAGES[name]) == [], f"add these to the deps of stage '{name}' in dvc.yaml"


def test_the_deps_check_sees_a_dropped_dep() -> None:
    stage = dict(STAGES["evaluate"])
    stage["deps"] = [d for d in stage["deps"] if d != "prefine/models/weights.py"]
    assert missing_deps(stage) == ["prefine/models/weights.py"]


def _imports_of(package: str) -> dict[str, set[str]]:
    return {
        str(f.relative_to(ROOT)): {name.split(".")[0] for name in imported_names(f)}
        for f in sorted((ROOT / package).rglob("*.py"))
    }


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("prefine", {"flows", "tasks", "prefect"}),  # the library: usable from a notebook
        ("tasks", {"flows", "prefect"}),  # DVC stage entry points
        ("flows", {"tasks"}),  # orchestration runs stages through DVC, never imports them
    ],
)
def test_layers(package: str, forbidden: set[str]) -> None:
    offending = {f: sorted(names & forbidden) for f, names in _imports_of(package).items() if names & forbidden}
    assert offending == {}, f"{package}/ must not import {sorted(forbidden)}"


def test_tasks_take_paths_from_one_place_not_from_each_other() -> None:
    for file in (ROOT / "tasks").glob("*.py"):
        siblings = {n for n in imported_names(file) if n.startswith("tasks.")} - {"tasks.stage", "tasks.stage.run_stage"}
        assert not siblings, f"{file.name} imports {sorted(siblings)}"


def _declared_outputs() -> set[str]:
    found = set()
    for stage in STAGES.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


def test_paths_module_and_dvc_yaml_name_the_same_outputs() -> None:
    declared = _declared_outputs()
    ours = {
        value.as_posix() for name, value in vars(paths).items()
        if isinstance(value, Path) and value.parts[0] in ("data", "models", "metrics", "plots") and len(value.parts) > 1
        and not any(part.startswith(".") for part in value.parts)  # working files no stage declares (resume state)
    }
    undeclared = {p for p in ours if not any(p == d or p.startswith(d + "/") or d.startswith(p + "/") for d in declared)}
    assert undeclared == set(), "prefine/paths.py names outputs that dvc.yaml does not declare"
    unknown = {d for d in declared if not any(d == p or p.startswith(d + "/") or d.startswith(p + "/") for p in ours)}
    assert unknown == set(), "dvc.yaml declares outputs that prefine/paths.py does not name"


def test_every_package_the_code_imports_is_declared() -> None:
    import sys

    declared = (ROOT / "pyproject.toml").read_text()
    aliases = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow", "ruamel": "ruamel.yaml"}
    third_party = set()
    for package in PACKAGES:
        for names in _imports_of(package).values():
            third_party |= {n for n in names if n not in PACKAGES and n not in sys.stdlib_module_names}
    undeclared = sorted(n for n in third_party if f'"{aliases.get(n, n)}' not in declared)
    assert undeclared == [], "imported but not in pyproject.toml's dependencies"
