"""evaluate stage: both classifiers on data/test; metrics for `dvc metrics`, confusion plots."""

from __future__ import annotations

import json

import pandas as pd

from prefine import paths
from prefine.atomic import atomic_path
from prefine.data.store import read_split
from prefine.evaluate.metrics import predict, scores
from prefine.models import weights
from prefine.params import Params
from prefine.training import device as devices
from tasks.stage import run_stage


def evaluate(params: Params) -> dict:
    test = read_split(paths.TEST_DIR)
    device = devices.pick()
    results, meta = {}, {}
    for name, path in (("pretrained", paths.CLASSIFIER_FILE), ("scratch", paths.SCRATCH_FILE)):
        model, meta[name] = weights.load_classifier(path)
        predicted = predict(model, test.images, device)
        results[name] = scores(test.labels, predicted, test.classes)
        names = pd.Series(test.classes)
        frame = pd.DataFrame({"actual": names[test.labels.numpy()].values, "predicted": names[predicted.numpy()].values})
        with atomic_path(paths.CONFUSION_PLOTS_DIR / f"{name}.csv") as tmp:
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
    with atomic_path(paths.EVALUATE_METRICS_FILE) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("pretrained", "scratch"):
        r = results[name]
        print(f"evaluate: {name:10s} accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")
    return metrics


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
