"""finetune stage: the pretrained encoder fine-tuned on data/labeled, and the scratch baseline."""

from __future__ import annotations

from pathlib import Path


from prefine import device as devices
from prefine import finetuning, fingerprint, weights
from prefine.logbook import EpochLog
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
    spec = weights.load(ENCODER)[1]["spec"]
    print(f"finetune: {len(labeled)} labeled images, {p.steps} steps, device {device}", flush=True)
    runs = (
        ("pretrained", p.strategy, ENCODER, CLASSIFIER),
        ("scratch", "scratch", spec, SCRATCH),
    )
    for name, strategy, encoder, target in runs:
        model = finetuning.start(encoder, len(labeled.classes), strategy, params.seed, p.unfreeze)
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
            "encoder": fingerprint.file_sha256(ENCODER) if strategy != "scratch" else None,
        }
        weights.save(target, model, meta)
        print(f"finetune: wrote {target} ({strategy})", flush=True)


if __name__ == "__main__":
    run_stage("finetune", finetune)
