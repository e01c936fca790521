"""pretrain stage: train the encoder without labels on data/unlabeled, streamed from disk;
resumable after each epoch, or at the exact batch with pretrain.save_every."""

from __future__ import annotations

from prefine import paths
from prefine.params import Params
from prefine.training.launch import data_parallel
from prefine.training.pretraining import pretrain
from tasks.stage import run_stage


def _body(params: Params) -> None:
    pretrain(params, paths.UNLABELED_DIR, paths.PRETRAIN_STATE_FILE, paths.PRETRAIN_PLOTS_DIR)


if __name__ == "__main__":
    run_stage("pretrain", data_parallel("tasks.pretrain", _body))
