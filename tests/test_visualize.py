"""The pictures of a run and the pages that show them: the visualize stage's pieces (unit), the
closing summary of `prefine run`/`flow`, and, end to end on a tiny project, the stage's files and
the `prefine plots` and `prefine report` pages opened in a real headless Chromium."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from browser import rendered
from PIL import Image
from projects import VENV_ENV, dvc, make_project
from rich.console import Console
from torch import nn

from flows.plots_cli import page_template
from flows.summary import RUN_DECISION, StageClock, metrics_table, show
from prefine import paths
from prefine.evaluate import visuals
from prefine.evaluate.gallery import CAPTIONS, class_gains
from prefine.data import store
from prefine.data.store import ImageSet
from prefine.evaluate.metrics import confusion_from_table, confusion_table
from prefine.params import Params

CPU = torch.device("cpu")


def _brute_force(encoder: nn.Module, queries: torch.Tensor, pool: torch.Tensor, k: int):
    with torch.no_grad():
        z = lambda x: F.normalize(encoder(x.float() / 255), dim=1)  # noqa: E731
        return (z(queries) @ z(pool).T).topk(k, dim=1)


def test_nearest_keeps_the_exact_top_k_across_pool_chunks(monkeypatch):
    monkeypatch.setattr(visuals, "POOL_CHUNK", 7)  # 50 images: 8 chunks, the last one short
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    generator = torch.Generator().manual_seed(0)
    queries = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8, generator=generator)
    pool = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=generator)
    similarity, found = visuals.nearest(encoder, queries, pool, torch.arange(50), 5, CPU)
    expected = _brute_force(encoder, queries, pool, 5)
    assert torch.equal(found, expected.indices)
    assert torch.allclose(similarity, expected.values, atol=1e-6)


class Reads:
    """A split on disk as Pixels that remembers the most rows one read asked for."""

    def __init__(self, pixels) -> None:
        self.pixels, self.shape, self.most = pixels, pixels.shape, 0

    def __len__(self) -> int:
        return len(self.pixels)

    def take(self, rows: np.ndarray) -> np.ndarray:
        self.most = max(self.most, len(rows))
        return self.pixels.take(rows)


def test_nearest_streams_a_pool_on_disk_and_finds_what_brute_force_does(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "SHARD_BYTES", 2000)  # 120 records of 24 bytes: 2 shards
    monkeypatch.setattr(visuals, "POOL_CHUNK", 16)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (120, 1, 4, 6), dtype=torch.uint8, generator=generator)
    shas = store.content_hashes(images.numpy())
    store.write_split(tmp_path / "pool", ImageSet(images, torch.full((120,), -1), []), pd.DataFrame({"sha256": shas}))
    pool = Reads(store.open_split(tmp_path / "pool").images)
    whole = store.read_split(tmp_path / "pool").images  # in storage order, as `pool` reads it
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(24, 8))
    queries = torch.randint(0, 256, (3, 1, 4, 6), dtype=torch.uint8, generator=generator)
    rows = visuals.sample(120, 50)
    similarity, found = visuals.nearest(encoder, queries, pool, rows, 5, CPU)
    expected = _brute_force(encoder, queries, whole[rows], 5)
    assert torch.equal(found, rows[expected.indices])
    assert torch.allclose(similarity, expected.values, atol=1e-6)
    assert pool.most == 16  # a chunk at a time, never the pool


def test_neighbours_are_drawn_from_splits_left_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(visuals, "POOL_SAMPLE", 30)
    generator = torch.Generator().manual_seed(2)
    folders = {}
    for name, labels in (("test", torch.arange(12) % 3), ("pool", torch.full((40,), -1))):
        images = torch.randint(0, 256, (len(labels), 1, 8, 8), dtype=torch.uint8, generator=generator)
        manifest = pd.DataFrame({"sha256": store.content_hashes(images.numpy())})
        store.write_split(tmp_path / name, ImageSet(images, labels, ["a", "b", "c"]), manifest)
        folders[name] = store.open_split(tmp_path / name)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    visuals.neighbours(encoder, folders["test"], folders["pool"].images, tmp_path / "n.png", CPU)
    with Image.open(tmp_path / "n.png") as image:
        assert image.format == "PNG" and min(image.size) > 100


def test_confusion_table_has_every_class_pair_in_class_order():
    labels, predicted = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    table = confusion_table(labels, predicted, ["c", "a", "b"])  # class order, not alphabetical
    assert len(table) == 9 and list(table["actual"][:3]) == ["c", "c", "c"]
    assert list(table["predicted_index"][:3]) == [0, 1, 2]
    assert table["count"].sum() == 6
    assert np.allclose(table.groupby("actual_index")["share"].sum(), 1.0)
    row = table[(table.actual == "b") & (table.predicted == "c")].iloc[0]
    assert (row["count"], row["share"]) == (1, 0.3333)


def test_confusion_from_table_gives_the_matrix_back():
    labels, predicted = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    table = pd.read_csv(io.StringIO(confusion_table(labels, predicted, ["c", "a", "b"]).to_csv(index=False)))
    assert (confusion_from_table(table, 3) == np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])).all()


class FirstPixel(nn.Module):
    """A 'classifier' that predicts class = the first pixel's value (of 4 classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot((x[:, 0, 0, 0] * 255).round().long(), 4).float()


def test_mistakes_are_found_batch_by_batch_in_test_order(monkeypatch):
    monkeypatch.setattr(visuals, "EXAMPLE_BATCH", 3)
    monkeypatch.setattr(visuals, "PAIR_EXAMPLES", 2)
    labels = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1])
    first = torch.tensor([1, 1, 2, 1, 1, 2, 3, 2], dtype=torch.uint8)  # class 1 predicted 2 at 5 and 7
    test = ImageSet(first.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous(), labels, ["a", "b", "c", "d"])
    assert visuals.mistakes(FirstPixel(), test, 1, 2, CPU).tolist() == [5, 7]
    assert visuals.mistakes(FirstPixel(), test, 0, 3, CPU).tolist() == []


def test_top_confusions_lists_mistakes_only_most_first():
    counts = np.array([[5, 0, 3], [1, 9, 0], [0, 4, 2]])
    assert visuals.top_confusions(counts, 10) == [(2, 1), (0, 2), (1, 0)]
    assert visuals.top_confusions(np.diag([3, 4]), 5) == []


@pytest.mark.parametrize("method,strategy,columns", [
    ("simclr", "full", ["original", "simclr\nview 1", "simclr\nview 2", "fine-tune\nshift 2, flip True"]),
    ("denoising", "full", ["original", "denoising input\nnoise 0.3", "fine-tune\nshift 2, flip True"]),
    ("gan", "semisup", ["original", "fine-tune\nshift 2, flip True", "FixMatch\nstrong view"]),
    ("cluster", "propagate", ["original", "cluster\nview", "fine-tune\nshift 2, flip True", "pool images\nstrong view"]),
])
def test_augmentation_preview_shows_the_views_the_params_make(method, strategy, columns):
    params = Params.model_validate({"pretrain": {"method": method}, "finetune": {"strategy": strategy}})
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = visuals.augmented_views(images, params)
    assert list(views) == columns
    for view in views.values():
        assert view.shape == (3, 1, 28, 28) and 0.0 <= view.min() and view.max() <= 1.0


def test_class_gains_keep_the_class_order():
    detail = {"per_class": {"pretrained": {"b": 0.5, "a": 0.9}, "scratch": {"a": 0.8, "b": 0.75}}}
    assert class_gains(detail) == [{"class": "b", "pretrained": 0.5, "scratch": 0.75, "gain": -0.25},
                                   {"class": "a", "pretrained": 0.9, "scratch": 0.8, "gain": 0.1}]


def test_stage_clock_reads_outcomes_and_wall_times_off_dvc_lines():
    clock = StageClock(["ingest", "pretrain", "evaluate"])
    for line in ["Stage 'ingest' didn't change, skipping", "Running stage 'pretrain':", "> python -m tasks.pretrain",
                 "Stage 'evaluate' is cached - skipping run, checking out outputs"]:
        clock.see(line)
    clock.stop()
    assert clock.outcomes == {"ingest": "up to date", "pretrain": "ran", "evaluate": "restored from run cache"}
    assert set(clock.seconds) == {"ingest", "pretrain", "evaluate"}


METRICS = {
    "test_images": 300, "pretrained": {"accuracy": 0.81, "macro_f1": 0.8},
    "scratch": {"accuracy": 0.79, "macro_f1": 0.78},
    "pixels_logreg": {"accuracy": 0.72, "macro_f1": 0.71}, "gain_over_scratch": {"accuracy": 0.02, "macro_f1": 0.02},
    "verdict": {"beats_scratch": True, "beats_best_baseline": True, "best_baseline": "pixels_logreg"},
}


def test_closing_summary_is_tables_not_a_dict(tmp_path):
    (tmp_path / paths.EVALUATE_METRICS_FILE).parent.mkdir()
    (tmp_path / paths.EVALUATE_METRICS_FILE).write_text(json.dumps(METRICS))
    console = Console(record=True, width=140)
    outcomes, seconds = {"ingest": "up to date", "pretrain": "ran"}, {"ingest": 0.4, "pretrain": 61.2}
    show(console, tmp_path, outcomes, seconds, RUN_DECISION)
    text = console.export_text()
    for words in ("pretrain", "61.2 s", "total", "61.6 s", "best baseline: pixels_logreg", "0.8100",
                  "pretrained beats scratch (+0.0200 accuracy)", RUN_DECISION):
        assert words in text, words
    assert "{" not in text


def test_metrics_table_says_when_pretraining_loses():
    lost = {**METRICS, "verdict": {**METRICS["verdict"], "beats_scratch": False}}
    assert "does not beat scratch" in metrics_table(lost).caption


def test_the_plots_template_inlines_vega_and_loads_nothing():
    page = page_template("t")
    assert "{plot_divs}" in page and "{scripts}" not in page and "<script src" not in page
    assert "vegaEmbed" in page and len(page) > 500_000  # vega, vega-lite and vega-embed themselves


@pytest.fixture(scope="module")
def project(tmp_path_factory, fmnist_slice) -> Path:
    """A tiny project run through `dvc repro` (every stage), with a label-budget table for the
    top-level plot that `prefine study` would write."""
    path = make_project(tmp_path_factory.mktemp("visualize") / "project", fmnist_slice)
    (path / "reports").mkdir()
    (path / "reports/label_budget.csv").write_text(
        "method,labels_per_class,seed,labeled,accuracy,macro_f1,wall_s\n"
        "simclr,10,0,100,0.70,0.69,5\nsimclr,10,1,100,0.72,0.71,5\nsimclr,100,0,1000,0.83,0.83,9\n"
        "scratch,10,0,100,0.68,0.67,3\nscratch,100,0,1000,0.82,0.82,6\n")
    result = dvc(path, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return path


def prefine(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "flows.cli", *args, "--repo", str(project)], cwd=project,
                            env=VENV_ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.e2e
def test_visualize_stage_writes_every_picture(project):
    for path in CAPTIONS:
        with Image.open(project / path) as image:
            assert image.format == "PNG" and min(image.size) > 100, path
    confusion = pd.read_csv(project / paths.CONFUSION_PLOTS_DIR / "pretrained.csv")
    assert len(confusion) == 10 * 10 and list(confusion["actual_index"].unique()) == list(range(10))


def _check_page(page: Path, images: int) -> None:
    """Offline: no address outside the page; in Chromium every image loaded and every chart drawn."""
    text = page.read_text(encoding="utf-8")
    assert "https://cdn" not in text and "<script src" not in text
    charts = text.count("vegaEmbed('#")
    assert charts >= 4 and "var spec = {};" not in text  # loss curves, confusion x 2, label budget; none empty
    found = rendered(page)
    assert found["errors"] == [] and found["charts"] == charts, found
    assert found["images"] == [True] * images, found


@pytest.mark.e2e
def test_plots_page_renders_every_plot_offline(project):
    out = prefine(project, "plots")
    page = Path(out.strip().splitlines()[-1])
    assert page == project / "dvc_plots/index.html" and "failed to load" not in out, out
    _check_page(page, images=len(CAPTIONS))


@pytest.mark.e2e
def test_report_page_is_one_self_contained_file(project):
    page = Path(prefine(project, "report").strip().splitlines()[-1])
    text = page.read_text(encoding="utf-8")
    assert text.count('<img src="data:image/png;base64,') == len(CAPTIONS)
    for words in ("Headline metrics", "pretrained", "No version registered yet", "&quot;lineage&quot;", "Sneaker"):
        assert words in text, words
    _check_page(page, images=len(CAPTIONS))


@pytest.mark.e2e
def test_run_ends_with_the_summary_tables(project):
    out = prefine(project, "run")
    for words in ("Stages", "visualize", "up to date", "best baseline", RUN_DECISION):
        assert words in out, out[-3000:]
