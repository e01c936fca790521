"""finetune stage: the pretrained encoder fine-tuned on data/labeled, and the scratch baseline."""

from __future__ import annotations

from pathlib import Path

from prefine import distributed, fingerprint, paths
from prefine.data.store import open_split
from prefine.evaluate.names import SCRATCH
from prefine.models import weights
from prefine.params import Params
from prefine.training import device as devices
from prefine.training import auto, finetuning
from prefine.training.launch import data_parallel
from prefine.training.logbook import EpochLog
from tasks.stage import run_stage


def finetune(params: Params) -> None:
    p = params.finetune
    labeled = open_split(paths.LABELED_DIR)  # both read per batch: any label budget, any pool size
    unlabeled = open_split(paths.UNLABELED_DIR) if p.strategy in (*finetuning.POOLED, "auto") else None
    device = devices.pick()
    spec = weights.load(paths.ENCODER_FILE)[1]["spec"]
    print(f"finetune: {len(labeled)} labeled images, {p.steps} steps, device {device}", flush=True)
    init = Path(p.init) if p.init is not None else None
    start = init or paths.ENCODER_FILE  # the weights the pretrained run starts from
    chosen = None
    if p.strategy == "auto":  # the scratch twin then follows the chosen strategy's recipe
        p, chosen = auto.choose(paths.ENCODER_FILE, labeled, p, params.seed, device, init, unlabeled)
    runs = (("pretrained", p.strategy, paths.CLASSIFIER_FILE), ("scratch", SCRATCH, paths.SCRATCH_FILE))
    for name, strategy, target in runs:
        model = finetuning.start(strategy, paths.ENCODER_FILE, len(labeled.classes), params.seed, p.unfreeze, init)
        log = EpochLog(paths.FINETUNE_PLOTS_DIR / name)
        try:
            finetuning.train(model, labeled, p, strategy, params.seed, device, log, unlabeled)
        finally:
            log.close()
        meta = {
            "spec": spec,
            "classes": labeled.classes,
            "strategy": strategy,
            "labels_per_class": p.labels_per_class,
            "encoder": None if strategy == SCRATCH else fingerprint.file_sha256(start),
            **({"auto": chosen} if chosen and strategy != SCRATCH else {}),
        }
        if distributed.is_main():
            weights.save(target, model, meta)
            print(f"finetune: wrote {target} ({strategy})", flush=True)


if __name__ == "__main__":
    run_stage("finetune", data_parallel("tasks.finetune", finetune))
