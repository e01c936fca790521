"""Per-epoch metrics through DVCLive, so `dvc plots show` draws the training curves, against
optimizer steps (the record's `step`), so curves of runs with different budgets line up."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live

from prefine import distributed


class EpochLog:
    """One DVCLive folder, one row per epoch at x = optimizer steps so far. dvc.yaml declares the
    plots, not DVCLive. Written by rank 0 only: other ranks of a data-parallel run log nothing."""

    def __init__(self, folder: Path, prefix: str = "") -> None:
        self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None) if distributed.is_main() else None
        self.prefix = prefix

    def __call__(self, record: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = int(record["step"])
        for key, value in record.items():
            if key not in ("epoch", "step", "images"):  # the x axis and its counters, not curves
                self.live.log_metric(f"{self.prefix}{key}", value)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
