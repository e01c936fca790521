"""pretrain stage: train the encoder without labels on data/unlabeled; resumable per epoch."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from prefine import device as devices
from prefine import fingerprint
from prefine.gan import GAN, save_samples
from prefine.logbook import EpochLog
from prefine.nets import spec_for
from prefine.objectives import build_objective
from prefine.params import Params
from prefine.store import read_split
from prefine.training import Run, fit
from tasks.stage import run_stage

UNLABELED = Path("data/unlabeled")
STATE = Path("models/pretrain/state.pt")
PLOTS = Path("plots/pretrain")
SAMPLES = "samples.png"  # gan only: generated images from a fixed z, under PLOTS


def fail_once_for_tests(record: dict) -> None:
    """Test-only switch: with PREFINE_FAIL_ONCE=<marker file>, crash once after the first epoch
    (creating the marker), so retries and resuming can be tested for real."""
    marker = os.environ.get("PREFINE_FAIL_ONCE")
    if marker and record["epoch"] == 1 and not Path(marker).exists():
        Path(marker).touch()
        raise RuntimeError(f"injected failure after epoch 1 (PREFINE_FAIL_ONCE={marker})")


def pretrain(params: Params, unlabeled: Path = UNLABELED, state_file: Path = STATE, plots: Path = PLOTS) -> list[dict]:
    p = params.pretrain
    data = read_split(unlabeled)
    spec = spec_for(p, data.images)
    torch.manual_seed(params.seed)
    device = devices.pick()
    model = build_objective(spec, p).to(device)
    betas = getattr(model, "betas", (0.9, 0.999))  # an objective may want its own (the GAN does)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=betas, weight_decay=p.weight_decay)
    run = Run(
        tensors=[data.images],
        epochs=p.epochs,
        batch_size=min(p.batch_size, len(data)),
        seed=params.seed,
        fingerprint=fingerprint.of(params.seed, p.model_dump(), spec, fingerprint.file_sha256(unlabeled / "manifest.parquet")),
        state_file=state_file,
        desc="pretrain",
        meta={"spec": spec, "method": p.method, "seed": params.seed, "pretrain": p.model_dump()},
    )
    print(f"pretrain: {p.method} with a {p.encoder} encoder on {len(data)} images, device {device}", flush=True)
    log = EpochLog(plots)

    def on_epoch(record: dict) -> None:
        log(record)
        fail_once_for_tests(record)

    try:
        history = fit(model, optimizer, lambda batch, gen: model.loss(batch[0], gen), run, device, on_epoch)
    finally:
        log.close()
    samples = plots / SAMPLES
    samples.unlink(missing_ok=True)  # never show another method's samples
    if isinstance(model, GAN):
        save_samples(model, samples, params.seed)
        print(f"pretrain: wrote {samples}", flush=True)
    return history


if __name__ == "__main__":
    run_stage("pretrain", pretrain)
