"""Smoke tests of benchmarks on the CPU: the GPU one, so a short GPU loan is not spent on a crash,
and the one the README's results table is made from."""

import importlib.util
import math
import sys
import typing
from pathlib import Path

import pytest

from prefine.errors import PrefineError
from prefine.params import PretrainParams

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, monkeypatch):
    """A benchmark script as a module (registered while the test runs: a dataclass looks itself up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_gpu_methods_runs_every_method_on_the_cpu(tmp_path, capsys, monkeypatch, one_thread):
    gpu_methods = _load("gpu_methods", monkeypatch)
    tiny = ["--batch", "8", "--steps", "1", "--warmup", "1", "--width", "4"]
    rows = gpu_methods.main(["--device", "cpu", *tiny, "--data", str(tmp_path / "none")])
    methods = typing.get_args(PretrainParams.model_fields["method"].annotation)
    assert [r.name for r in rows[2:]] == list(methods)
    assert all(r.error is None and math.isfinite(r.images_per_s) and r.peak_mb is None for r in rows)
    assert all(math.isfinite(r.loss) for r in rows[2:])
    assert "random uint8 images" in capsys.readouterr().out


def test_baselines_table_has_every_comparison_and_rewrites_the_readme_block(tmp_path, monkeypatch, one_thread):
    baselines = _load("baselines", monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{baselines.README_BEGIN}\nold table\n{baselines.README_END}\nafter\n")
    tiny = ["-S", "ingest.limit=300", "-S", "pretrain.method=simclr", "-S", "pretrain.epochs=1", "-S", "pretrain.width=4",
            "-S", "finetune.steps=3", "-S", "finetune.strategy=full"]
    baselines.main(["--networks", "--budgets", "2,3", "--seeds", "0", *tiny, "--out", str(tmp_path / "b.md"),
                    "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith(f"intro\n{baselines.README_BEGIN}\n") and text.endswith(f"{baselines.README_END}\nafter\n")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == ["| run", "2 labels/class", "3 labels/class", "seconds a run |"] and len(rows) == 8
    assert {"pretrained (simclr, `full`)", "scratch, same budget", "linear probe of the pretrained encoder",
            "logistic regression on the pixels"} <= {row[0][2:] for row in rows}
    report = (tmp_path / "b.md").read_text()
    assert all(name in report for name in ("linear_probe", "pretrained", "scratch", "pixels_logreg", "pca_knn"))
    runs = report.split("## Test accuracy of each run")[1].splitlines()
    assert runs[2] == "| method | 2, seed 0 | 3, seed 0 |"
    methods = ("linear_probe", "pretrained", "scratch", "pca_knn", "pca_logreg", "pixels_knn", "pixels_logreg")
    assert [line.split(" | ")[0] for line in runs[4:]] == [f"| {m}" for m in methods]
    assert all(0 <= float(cell) <= 1 for line in runs[4:] for cell in line.strip(" |").split(" | ")[1:])


def test_baselines_refuses_a_readme_without_the_block_and_leaves_it(tmp_path, monkeypatch):
    baselines = _load("baselines", monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    with pytest.raises(PrefineError, match=str(readme)):
        baselines.rewrite_readme(readme, "| table |\n")
    assert readme.read_text() == "no block here\n"
