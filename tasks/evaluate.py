"""evaluate stage: both classifiers on data/test; metrics for `dvc metrics`, confusion plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from prefine import device as devices
from prefine import weights
from prefine.atomic import atomic_path
from prefine.evaluation import predict, scores
from prefine.params import Params
from prefine.store import read_split
from tasks.finetune import CLASSIFIER, SCRATCH
from tasks.stage import run_stage

TEST = Path("data/test")
METRICS = Path("metrics/evaluate.json")
CONFUSION = Path("plots/confusion")


def evaluate(params: Params) -> dict:
    test = read_split(TEST)
    device = devices.pick()
    results, meta = {}, {}
    for name, path in (("pretrained", CLASSIFIER), ("scratch", SCRATCH)):
        model, meta[name] = weights.load_classifier(path)
        predicted = predict(model, test.images, device)
        results[name] = scores(test.labels, predicted, test.classes)
        names = pd.Series(test.classes)
        frame = pd.DataFrame({"actual": names[test.labels.numpy()].values, "predicted": names[predicted.numpy()].values})
        with atomic_path(CONFUSION / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    metrics = {
        "strategy": meta["pretrained"]["strategy"],
        "labels_per_class": meta["pretrained"]["labels_per_class"],
        "test_images": len(test),
        **results,
        "gain_over_scratch": {
            key: round(results["pretrained"][key] - results["scratch"][key], 4) for key in ("accuracy", "macro_f1")
        },
    }
    with atomic_path(METRICS) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("pretrained", "scratch"):
        r = results[name]
        print(f"evaluate: {name:10s} accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")
    return metrics


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
