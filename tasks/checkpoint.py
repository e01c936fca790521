"""checkpoint stage: export the pretrained encoder (safetensors) with its model card."""

from __future__ import annotations

import json
import subprocess

from prefine import fingerprint, paths
from prefine.atomic import atomic_path
from prefine.data.store import open_split
from prefine.evaluate.probe import embed, knn_accuracy
from prefine.models import weights
from prefine.models.objectives import load_pretrained
from prefine.params import Params
from prefine.training import device as devices
from tasks.stage import run_stage


def git_commit() -> str | None:
    """HEAD of the repo we run in (with -dirty when tracked files changed), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty.strip() else "")


def checkpoint(params: Params) -> dict:
    objective, state = load_pretrained(paths.PRETRAIN_STATE_FILE)
    meta = state["meta"]
    encoder = objective.encoder
    labeled = open_split(paths.LABELED_DIR)  # embedded a batch at a time, from disk
    device = devices.pick()
    z = embed(encoder.to(device), labeled.images, device)
    history = state["history"]
    metrics = {
        "method": meta["method"],
        "epochs": state["epoch"],
        "final_loss": history[-1]["loss"],
        "knn_accuracy": knn_accuracy(z, labeled.labels, params.checkpoint.knn_k),
        "embedding_dim": encoder.dim,
    }
    card = {
        "name": "encoder",
        "spec": meta["spec"],
        "pretraining": {"method": meta["method"], "seed": meta["seed"], "params": meta["pretrain"]},
        "metrics": metrics,
        "lineage": {
            "git_commit": git_commit(),
            "data": {
                split: fingerprint.file_sha256(folder / "manifest.parquet")
                for split, folder in (("unlabeled", paths.UNLABELED_DIR), ("labeled", paths.LABELED_DIR))
            },
            "training_state": fingerprint.file_sha256(paths.PRETRAIN_STATE_FILE),
        },
        "history": history,
    }
    weights.save(paths.ENCODER_FILE, encoder, {"spec": meta["spec"], "method": meta["method"]})
    for path, body in ((paths.ENCODER_CARD_FILE, card), (paths.PRETRAIN_METRICS_FILE, metrics)):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(body, indent=2) + "\n")
    print(f"checkpoint: {paths.ENCODER_FILE} ({meta['method']}, {state['epoch']} epochs), kNN accuracy {metrics['knn_accuracy']:.4f}")
    return metrics


if __name__ == "__main__":
    run_stage("checkpoint", checkpoint)
