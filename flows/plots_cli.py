"""`prefine plots`: `dvc plots show` as a page that renders offline. DVC's own page loads vega,
vega-lite and vega-embed from a CDN, so without network every chart on it is blank; this page
carries the three libraries inline, read from the npm packages bin/setup installs into
.venv/vega (nothing is fetched at run time). Registered on the app in flows/cli.py; `prefine
report` (flows/report_page.py) inlines the same libraries."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from prefine.errors import PrefineError

VEGA_FILES = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")
PAGE_DIR = Path("dvc_plots")  # `dvc plots show`'s own default folder (gitignored)
STYLE = "body { font-family: sans-serif; margin: 1em 2em; } img { max-width: 100%; }"

RepoOption = Annotated[Path, typer.Option("--repo", "-r", help="The project (DVC + git) folder.")]


def vega_modules() -> Path:
    """node_modules of the vega packages, beside this interpreter's venv (bin/setup puts them there)."""
    return Path(sys.prefix) / "vega" / "node_modules"


def vega_scripts() -> str:
    """vega, vega-lite and vega-embed as inline <script> elements (none of them holds `</script`)."""
    scripts = []
    for name in VEGA_FILES:
        file = vega_modules() / name
        if not file.is_file():
            raise PrefineError(f"{file}: missing; run bin/setup (it installs vega, vega-lite and vega-embed with npm)")
        scripts.append(f"<script>{file.read_text(encoding='utf-8')}</script>")
    return "\n".join(scripts)


def page_template(title: str) -> str:
    """The page for `dvc plots show --html-template`: DVC fills in {plot_divs}; there is no
    {scripts} placeholder, so DVC's CDN script tags are left out."""
    return (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"{vega_scripts()}\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
            "{plot_divs}\n</body>\n</html>\n")


def _echo(line: str) -> None:
    """DVC's lines, but for the page's file:// address: plots() prints it as a path."""
    if not line.startswith("file://"):
        print(line)


def render(repo: Path, out: Path) -> Path:
    """Every DVC plot of `repo` on out/index.html (images copied beside it), readable offline.
    DVC's warnings (a plot file missing, say) go to stdout; a failure is a PrefineError."""
    from flows.dvc import run_dvc

    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.html"
        template.write_text(page_template("Prefine plots"), encoding="utf-8")
        args = ["plots", "show", "--html-template", str(template), "-o", str(out.resolve())]
        result = run_dvc(repo, args, _echo)
    if result.returncode:
        raise PrefineError(f"dvc plots show failed:\n{result.tail}")
    return out.resolve() / "index.html"


def plots(
    repo: RepoOption = Path("."),
    out: Annotated[Path, typer.Option(help="Folder for the page (index.html) and its images.")] = PAGE_DIR,
) -> None:
    """Every DVC plot (loss curves, confusion matrices, label budget, the visualize stage's
    pictures) on one HTML page that renders without network; prints the page's path."""
    from flows.cli import _fail, _project, console

    _project(repo)
    try:
        page = render(repo, out if out.is_absolute() else repo / out)
    except PrefineError as exc:
        _fail(str(exc), 2)
    console.print(str(page), highlight=False, soft_wrap=True)
