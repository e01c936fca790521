"""Per-epoch metrics through DVCLive, so `dvc plots show` draws the training curves, against
optimizer steps (the record's `step`), so curves of runs with different budgets line up."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live


class EpochLog:
    """One DVCLive folder, one row per epoch at x = optimizer steps so far. dvc.yaml declares the
    plots, not DVCLive."""

    def __init__(self, folder: Path, prefix: str = "") -> None:
        self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None)
        self.prefix = prefix

    def __call__(self, record: dict[str, float]) -> None:
        self.live.step = int(record["step"])
        for key, value in record.items():
            if key not in ("epoch", "step", "images"):  # the x axis and its counters, not curves
                self.live.log_metric(f"{self.prefix}{key}", value)

    def close(self) -> None:
        self.live.end()
