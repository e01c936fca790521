"""finetune stage: the pretrained encoder fine-tuned on data/labeled, and the scratch baseline."""

from __future__ import annotations

from pathlib import Path

import torch

from prefine import device as devices
from prefine import finetuning, fingerprint, weights
from prefine.logbook import EpochLog
from prefine.nets import build_encoder
from prefine.params import Params
from prefine.store import read_split
from tasks.checkpoint import ENCODER, LABELED
from tasks.pretrain import UNLABELED
from tasks.stage import run_stage

CLASSIFIER = Path("models/classifier.safetensors")
SCRATCH = Path("models/scratch.safetensors")
PLOTS = Path("plots/finetune")


def finetune(params: Params) -> None:
    p = params.finetune
    labeled = read_split(LABELED)
    unlabeled = read_split(UNLABELED) if p.strategy == "semisup" else None
    device = devices.pick()
    pretrained, encoder_meta = weights.load_encoder(ENCODER)
    spec = encoder_meta["spec"]
    print(f"finetune: {len(labeled)} labeled images, {p.steps} steps, device {device}", flush=True)
    runs = (
        ("pretrained", p.strategy, pretrained, CLASSIFIER),
        ("scratch", "scratch", None, SCRATCH),
    )
    for name, strategy, encoder, target in runs:
        torch.manual_seed(params.seed)  # the same head init and batch order for both
        model = finetuning.build(encoder or build_encoder(spec), len(labeled.classes), strategy, p.unfreeze)
        log = EpochLog(PLOTS / name)
        try:
            finetuning.train(model, labeled, p, strategy, params.seed, device, log, unlabeled)
        finally:
            log.close()
        meta = {
            "spec": spec,
            "classes": labeled.classes,
            "strategy": strategy,
            "labels_per_class": p.labels_per_class,
            "encoder": fingerprint.file_sha256(ENCODER) if encoder is not None else None,
        }
        weights.save(target, model, meta)
        print(f"finetune: wrote {target} ({strategy})", flush=True)


if __name__ == "__main__":
    run_stage("finetune", finetune)
