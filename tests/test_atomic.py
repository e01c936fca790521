"""Write beside, then rename: what a killed writer leaves is cleaned up by the next write."""

from __future__ import annotations

import os
from pathlib import Path

from prefine.atomic import atomic_path


def test_leftovers_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    (tmp_path / ".state.pt.tmp-999999").write_text("half a file")  # a writer killed mid-write
    (tmp_path / ".state.pt.old-999998").mkdir()  # killed while swapping a folder
    alive = tmp_path / f".state.pt.tmp-{os.getppid()}"  # another process still writing
    alive.write_text("in progress")
    with atomic_path(tmp_path / "state.pt") as tmp:
        tmp.write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "state.pt"]
    assert (tmp_path / "state.pt").read_text() == "done"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
