"""Screenshots of every plot `prefine plots` shows, for docs/plots.md: each plot alone on a page
(vega inlined, as in `prefine report`), photographed by headless Chromium into docs/img/.

    python docs/screenshots.py PROJECT    # a project after `dvc repro`; the default run's look best
"""

from __future__ import annotations

import base64
import io
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import screenshot  # noqa: E402

from flows.plots_cli import STYLE, vega_scripts  # noqa: E402
from flows.report_page import dvc_plots, figure_html  # noqa: E402

OUT = ROOT / "docs" / "img"
CHART_WINDOW = (760, 640)  # DVC's charts and the confusion matrices fit in it
MARGIN = (160, 110)  # around an image: the page's and the figure's margins, and the caption


def file_name(plot_id: str) -> str:
    """A plot id (a path, or a title) as a file name: `plots/visual/neighbours.png` -> plots_visual_neighbours."""
    return re.sub(r"[^a-z0-9]+", "_", Path(plot_id).with_suffix("").as_posix().lower()).strip("_")


def window(renderer: dict) -> tuple[int, int]:
    """A window the plot fits in: the image's own size plus margins, or CHART_WINDOW."""
    if renderer["type"] != "image":
        return CHART_WINDOW
    data = base64.b64decode(renderer["src"].split(",", 1)[1])
    width, height = Image.open(io.BytesIO(data)).size
    return width + MARGIN[0], height + MARGIN[1]


def main(project: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    head = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><style>{STYLE}</style>{vega_scripts()}</head><body>'
    with tempfile.TemporaryDirectory() as tmp:
        for number, (plot_id, renderers) in enumerate(dvc_plots(project).items()):
            for renderer in renderers[:1]:  # the workspace's
                page = Path(tmp) / f"{number}.html"
                page.write_text(head + figure_html(number, plot_id, renderer) + "</body></html>", encoding="utf-8")
                target = OUT / f"{file_name(plot_id)}.png"
                screenshot(page, target, *window(renderer))
                print(f"{plot_id} -> {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
