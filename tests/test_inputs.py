"""inputs.json: the ingest stage's view of every file it reads, so DVC reruns ingest when images
change where DVC itself does not look (symlinked class folders, images a manifest names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from projects import VENV_ENV, dvc, make_project

from prefine.data.inputs import summarize, walk
from prefine.errors import PrefineError
from prefine.params import IngestParams


def _images(folder: Path, count: int, write_png, start: int = 0) -> None:
    for i in range(start, start + count):
        write_png(folder / f"{i:03d}.png", np.full((8, 8), (i * 37) % 256, dtype=np.uint8))


def test_walk_follows_symlinked_folders_inside_the_root(tmp_path: Path, write_png) -> None:
    root = tmp_path / "store"
    _images(root / ".real" / "cats", 2, write_png)
    (root / "cats").symlink_to(root / ".real" / "cats")  # DVC records such a folder as 0 files
    (root / "cats" / "loop").symlink_to(root)  # a cycle must not hang the walk
    files = walk(root)
    assert [f.relative_to(root).as_posix() for f in files] == ["cats/000.png", "cats/001.png"]


def test_a_symlink_leaving_the_root_is_refused_by_name(tmp_path: Path, write_png) -> None:
    _images(tmp_path / "elsewhere", 1, write_png)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "dogs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PrefineError, match=r"root/dogs: a symlink to .*elsewhere, outside the data root"):
        walk(tmp_path / "root")


def test_replacing_an_image_a_manifest_names_changes_the_summary(tmp_path: Path, write_png) -> None:
    _images(tmp_path / "img", 2, write_png)
    (tmp_path / "list.csv").write_text("path,label\nimg/000.png,a\nimg/001.png,b\n")
    params = IngestParams(source="manifest", path=str(tmp_path / "list.csv"))
    before = summarize(params)
    write_png(tmp_path / "img" / "001.png", np.zeros((9, 9), dtype=np.uint8))
    os.utime(tmp_path / "img" / "001.png", ns=(1, 1))
    after = summarize(params)
    assert before["files"] == after["files"] == 3 and before["sha256"] != after["sha256"]


def _manifest_project(tmp_path: Path, write_png) -> tuple[Path, Path]:
    images = tmp_path / "shop" / "img"
    for n, label in enumerate(["cats", "dogs"]):
        _images(images / label, 30, write_png, start=100 * n)
    rows = [f"img/{label}/{f.name},{label}" for label in ("cats", "dogs") for f in sorted((images / label).iterdir())]
    (tmp_path / "shop" / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    project = make_project(tmp_path / "project", tmp_path / "shop" / "list.csv",
                           ["ingest.source=manifest", "ingest.image_size=8"])
    return project, images


@pytest.mark.e2e
def test_replacing_an_image_a_manifest_names_reruns_ingest(tmp_path: Path, write_png) -> None:
    """DVC alone tracks the manifest file, not the images it names: it would call this up to date."""
    project, images = _manifest_project(tmp_path, write_png)
    assert dvc(project, "repro", "ingest").returncode == 0
    assert json.loads(dvc(project, "status", "--json", "ingest").stdout) == {}

    write_png(images / "cats" / "003.png", np.zeros((8, 8), dtype=np.uint8))  # same name, new pixels
    assert json.loads(dvc(project, "status", "--json", "ingest").stdout) == {}  # what DVC alone sees
    index = subprocess.run([sys.executable, "-m", "flows.cli", "index"], cwd=project, env=VENV_ENV,
                           capture_output=True, text=True)
    assert index.returncode == 0 and "changed" in index.stdout, index.stdout + index.stderr
    changed = json.loads(dvc(project, "status", "--json", "ingest").stdout)
    assert changed["ingest"] == [{"changed deps": {"inputs.json": "modified"}}]


@pytest.mark.e2e
def test_a_class_folder_linked_from_outside_the_root_stops_ingest(tmp_path: Path, write_png) -> None:
    data = tmp_path / "photos"
    _images(data / "cats", 30, write_png)
    _images(tmp_path / "nas" / "dogs", 30, write_png, start=100)
    (data / "dogs").symlink_to(tmp_path / "nas" / "dogs")
    project = make_project(tmp_path / "project", data, ["ingest.source=folder", "ingest.image_size=8"])
    result = dvc(project, "repro", "ingest")
    assert result.returncode != 0
    assert "photos/dogs: a symlink to" in result.stderr + result.stdout and not (project / "data").exists()
