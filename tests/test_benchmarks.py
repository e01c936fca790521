"""Smoke test of the GPU benchmark on the CPU, so a short GPU loan is not spent on a crash."""

import importlib.util
import math
import sys
import typing
from pathlib import Path

from prefine.params import PretrainParams

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_methods.py"


def test_gpu_methods_runs_every_method_on_the_cpu(tmp_path, capsys, monkeypatch, one_thread):
    spec = importlib.util.spec_from_file_location("gpu_methods", SCRIPT)
    gpu_methods = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gpu_methods)  # its dataclass looks itself up there
    spec.loader.exec_module(gpu_methods)
    tiny = ["--batch", "8", "--steps", "1", "--warmup", "1", "--width", "4"]
    rows = gpu_methods.main(["--device", "cpu", *tiny, "--data", str(tmp_path / "none")])
    methods = typing.get_args(PretrainParams.model_fields["method"].annotation)
    assert [r.name for r in rows[2:]] == list(methods)
    assert all(r.error is None and math.isfinite(r.images_per_s) and r.peak_mb is None for r in rows)
    assert all(math.isfinite(r.loss) for r in rows[2:])
    assert "random uint8 images" in capsys.readouterr().out
