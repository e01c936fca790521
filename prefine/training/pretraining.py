"""Pretraining: the objective named by `pretrain.method` trained on an unlabeled split streamed
from disk (never loaded whole), its whole state saved every epoch (and every `save_every` steps)
so a rerun resumes at the exact batch. The stage logs its curves through `on_epoch` (DVCLive);
this module does not need DVC, so a bare GPU host can run it (benchmarks/gpu_full.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from prefine import distributed, fingerprint
from prefine.data.store import ImageSet, open_split
from prefine.models import weights
from prefine.models.gan import GAN, save_samples
from prefine.models.nets import spec_for
from prefine.models.clusters import hog_clusters
from prefine.models.objectives import Cluster, build_objective
from prefine.params import Params
from prefine.training import device as devices
from prefine.training.loop import EpochFn, Run, StepFn, fit

SAMPLES_NAME = "samples.png"  # gan only: generated images from a fixed z, in the plots folder
# keys that change how it runs, not what it learns: a saved state resumes across them
HOW_NOT_WHAT = {"workers", "save_every"}


def pretrain(params: Params, unlabeled: Path, state_file: Path, plots: Path,
             on_epoch: EpochFn | None = None) -> list[dict]:
    """Train params.pretrain's objective on the split in `unlabeled`; return the per-epoch history.
    `plots` gets the GAN's samples; `on_epoch` each epoch's record."""
    p = params.pretrain
    data = open_split(unlabeled)
    spec = spec_for(p, data.images)
    torch.manual_seed(params.seed)
    device = devices.pick()
    model = build_objective(spec, p)
    init = Path(p.init) if p.init is not None else None
    if init is not None:
        weights.load_into(model.encoder, init, "pretrain.init")
    model.to(device)
    clustered = isinstance(model, Cluster)
    if clustered:  # its targets ride in the labels' place (the pool has none)
        data = ImageSet(data.images, hog_clusters(data.images, p.clusters, params.seed), data.classes)
    betas = getattr(model, "betas", (0.9, 0.999))  # an objective may want its own (the GAN does)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=betas, weight_decay=p.weight_decay)
    run = Run(
        data=data,
        epochs=p.epochs,
        batch_size=min(p.batch_size, len(data)),
        seed=params.seed,
        fingerprint=fingerprint.of(params.seed, p.model_dump(exclude=HOW_NOT_WHAT), spec,
                                   fingerprint.file_sha256(unlabeled / "manifest.parquet"),
                                   init and fingerprint.file_sha256(init),
                                   clustered and fingerprint.array_sha256(data.labels.numpy())),
        state_file=state_file,
        desc="pretrain",
        meta={"spec": spec, "method": p.method, "seed": params.seed, "pretrain": p.model_dump()},
        workers=p.workers,
        save_every=p.save_every,
    )
    print(f"pretrain: {p.method} with a {p.encoder} encoder on {len(data)} images, device {device}"
          + (f" (rank {distributed.rank()} of {distributed.world()})" if distributed.world() > 1 else ""), flush=True)
    step: StepFn = lambda batch, gen: model.loss(batch[0], gen, *batch[1:2] if clustered else ())  # noqa: E731
    history = fit(model, optimizer, step, run, device, on_epoch)
    if not distributed.is_main():
        return history
    samples = plots / SAMPLES_NAME
    samples.unlink(missing_ok=True)  # never show another method's samples
    if isinstance(model, GAN):
        save_samples(model, samples, params.seed)
        print(f"pretrain: wrote {samples}", flush=True)
    return history
