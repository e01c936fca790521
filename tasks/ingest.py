"""DVC stage `ingest`: params.yaml -> data/{unlabeled,labeled,test} + metrics/ingest.json."""

from __future__ import annotations

from prefine import paths
from prefine.data import inputs
from prefine.data.ingest import ingest
from prefine.params import Params
from tasks.stage import run_stage


def _body(params: Params) -> None:
    inputs.refresh(params.ingest, paths.INPUTS_FILE)  # what this run read; DVC records it after
    for key, value in ingest(params).items():
        print(f"{key:<24}{value:>8}")


if __name__ == "__main__":
    run_stage("ingest", _body)
