"""pretrain stage: train the encoder without labels on data/unlabeled, streamed from disk;
resumable after each epoch, or at the exact batch with pretrain.save_every. It trains in
paths.PRETRAIN_RESUME_FILE and moves the finished state to its output, so that a rerun after a
crash resumes and the output, not being `persist`, is in DVC's run-cache (a study's cells that
share a method and seed pretrain once). Moved, not copied: a finished state left behind would be
resumed by the next run, which DVC starts because a dependency changed, the objective's code
perhaps, and would write the old weights under the new code."""

from __future__ import annotations

from pathlib import Path

from prefine import distributed, paths
from prefine.atomic import atomic_path
from prefine.params import Params
from prefine.training.launch import data_parallel
from prefine.training.logbook import EpochLog
from prefine.training.pretraining import pretrain
from tasks.stage import run_stage


def train(params: Params, state_file: Path = paths.PRETRAIN_RESUME_FILE,
          plots: Path = paths.PRETRAIN_PLOTS_DIR) -> list[dict]:
    """Pretrain on data/unlabeled with the curves in `plots` (DVCLive); the per-epoch history."""
    log = EpochLog(plots)
    try:
        return pretrain(params, paths.UNLABELED_DIR, state_file, plots, log)
    finally:
        log.close()


def _body(params: Params) -> None:
    train(params)
    if distributed.is_main():
        with atomic_path(paths.PRETRAIN_STATE_FILE) as tmp:
            paths.PRETRAIN_RESUME_FILE.replace(tmp)


if __name__ == "__main__":
    run_stage("pretrain", data_parallel("tasks.pretrain", _body))
