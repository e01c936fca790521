"""`prefine predict` and `prefine embed`: a trained model over new images (prefine/use/), with a
progress bar. Registered on the app in flows/cli.py; the library is imported inside the commands,
so `prefine --help` stays quick.

Exit codes: 0 every input written; 3 some inputs could not be read (their rows hold the error,
the others were written); 2 a source or weights file can't be used; 1 a registry problem (no such
version, no prod, the file can't be fetched). The output appears only when it is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

Sources = Annotated[list[Path], typer.Argument(
    help="Folders (recursively), CSV/Parquet manifests (a `path` column, relative to the manifest), "
         "image files, or prefine data splits (data/test).", metavar="SOURCE", show_default=False)]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="Images per forward pass (default: by image size and device: 128 at 28 px on a CPU, 1,024 on a GPU).")]
RepoOption = Annotated[Path, typer.Option("--repo", "-r", help="The project whose registry resolves --model.")]


def predict(
    sources: Sources,
    model: Annotated[str, typer.Option(help="classifier@prod, classifier@<version>, or a .safetensors file.")] = "classifier@prod",
    out: Annotated[Path, typer.Option(help="Parquet file: path, predicted, confidence, top_k, top_k_scores, error.")] = Path("preds.parquet"),
    top_k: Annotated[int, typer.Option(min=1, help="How many best classes (and scores) per image.")] = 3,
    batch_size: BatchSize = None,
    repo: RepoOption = Path("."),
) -> None:
    """Classify images with a registered (or any) classifier: one row per image."""
    from prefine.use import predict as use

    _use(lambda file, progress: use.predict(file, sources, out, top_k, batch_size, progress),
         model, "classifier", repo, out, "predicted")


def embed(
    sources: Sources,
    model: Annotated[str, typer.Option(help="encoder@prod (the prod classifier's encoder), encoder@<version>, or a .safetensors file.")] = "encoder@prod",
    out: Annotated[Path, typer.Option(help="Parquet file: path, embedding (list<float32>), error.")] = Path("embeddings.parquet"),
    batch_size: BatchSize = None,
    repo: RepoOption = Path("."),
) -> None:
    """Embed images with a pretrained encoder: one row per image, the embedding as a list column."""
    from prefine.use import predict as use

    _use(lambda file, progress: use.embed(file, sources, out, batch_size, progress),
         model, "encoder", repo, out, "embedded")


def _use(job: Callable, model: str, artifact: str, repo: Path, out: Path, verb: str) -> None:
    """Resolve the model, run `job(file, progress)` under a progress bar, say what came out, and
    exit with the code the module docstring lists."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from flows.cli import _fail, console
    from prefine.errors import PrefineError
    from prefine.registry import RegistryError
    from prefine.use.resolve import model_file

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with model_file(model, artifact, repo) as file, Progress(*columns, console=console) as bar:
            task = bar.add_task(verb, total=None)
            summary = job(file, lambda done, total: bar.update(task, completed=done, total=total))
    except RegistryError as exc:
        _fail(str(exc), 1)
    except PrefineError as exc:
        _fail(str(exc), 2)
    console.print(f"{out}: {summary.ok} {verb}, {summary.failed} failed", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(3)
