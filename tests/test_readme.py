"""The README is a manual: under 200 lines, and every command in it parses as written (options
and subcommands exist); the cheap ones run for real in a throwaway project."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from projects import VENV_ENV, make_project

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOOLS = {"prefine", "dvc", "prefect"}


def commands() -> list[list[str]]:
    """Each tool command in the README's bash blocks, comments and `&&` chains split off."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words and words[0] in TOOLS:
                    found.append(words)
    return found


def test_readme_is_short() -> None:
    assert len(README.splitlines()) < 200


def test_the_readme_shows_every_tool() -> None:
    assert {words[0] for words in commands()} == TOOLS


@pytest.mark.parametrize("words", [w for w in commands() if w[0] == "prefine"], ids=" ".join)
def test_prefine_commands_parse(words: list[str]) -> None:
    """Click parses every option before --help takes effect: an unknown one fails here."""
    command = typer.main.get_command(app)
    with pytest.raises(SystemExit) as done:
        command.main([*words[1:], "--help"], prog_name="prefine", standalone_mode=True)
    assert done.value.code == 0, words


@pytest.mark.parametrize("words", [w for w in commands() if w[0] != "prefine"], ids=" ".join)
def test_dvc_and_prefect_commands_parse(words: list[str]) -> None:
    module = {"dvc": "dvc", "prefect": "prefect"}[words[0]]
    result = subprocess.run([sys.executable, "-m", module, *words[1:], "--help"], capture_output=True, text=True,
                            env=VENV_ENV, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.e2e
def test_quick_profile_commands_run_as_written(tmp_path: Path, fmnist_slice: Path) -> None:
    project = make_project(tmp_path / "project", fmnist_slice, ["ingest.limit=600"], profile="default")
    for words in (["prefine", "profile", "quick"], ["prefine", "run", "--profile", "quick", "-S", "pretrain.epochs=3"],
                  ["prefine", "profile"]):
        assert words in commands()
        result = subprocess.run([sys.executable, "-m", "flows.cli", *words[1:]], cwd=project, capture_output=True,
                                text=True, env=VENV_ENV, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:]
    assert "* quick" not in result.stdout  # -S pretrain.epochs=3 makes params.yaml differ from quick
    card = (project / "models/encoder.card.json").read_text()
    assert '"epochs": 3' in card  # what trained is what -S said
