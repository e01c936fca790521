"""Per-epoch metrics through DVCLive, so `dvc plots show` draws the training curves."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live


class EpochLog:
    """One DVCLive folder; every record is one step. dvc.yaml declares the plots, not DVCLive."""

    def __init__(self, folder: Path, prefix: str = "") -> None:
        self.live = Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None)
        self.prefix = prefix

    def __call__(self, record: dict[str, float]) -> None:
        for key, value in record.items():
            if key != "epoch":
                self.live.log_metric(f"{self.prefix}{key}", value)
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
