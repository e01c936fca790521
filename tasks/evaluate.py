"""evaluate stage: both classifiers, the pretrained encoder's linear probe and the trivial
baselines on data/test; headline metrics for `dvc metrics` / `dvc exp show` (with a verdict),
per-class detail beside them, confusion plots."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path


from prefine import paths
from prefine.atomic import atomic_path
from prefine.data.store import ImageSet, open_split, read_split, read_split_manifest
from prefine.evaluate import baselines
from prefine.evaluate.metrics import confusion_table, predict, scores
from prefine.evaluate.names import BASELINES, PROBE
from prefine.evaluate.probe import probe_head
from prefine.models import weights
from prefine.models.nets import Classifier
from prefine.params import Params
from prefine.training import device as devices
from tasks.stage import run_stage

HEADLINE = ("accuracy", "macro_f1")  # per model in evaluate.json; the rest goes to the detail file
NETWORKS = {"pretrained": paths.CLASSIFIER_FILE, "scratch": paths.SCRATCH_FILE}


def identify_test_set(folder: Path) -> dict[str, str | int]:
    """sha256 of the split's sorted image hashes, one per line, and its size: the registry gate
    compares versions only when they were tested on the same images."""
    shas = sorted(read_split_manifest(folder)["sha256"])
    return {"sha256": hashlib.sha256("\n".join(shas).encode()).hexdigest(), "images": len(shas)}


def score_networks(test: ImageSet) -> tuple[dict[str, dict], dict[str, dict]]:
    """scores() and the weights' meta of each fine-tuned network; writes its confusion plot."""
    device = devices.pick()
    results, meta = {}, {}
    for name, path in NETWORKS.items():
        model, meta[name] = weights.load_classifier(path)
        predicted = predict(model, test.images, device)
        results[name] = scores(test.labels, predicted, test.classes)
        with atomic_path(paths.CONFUSION_PLOTS_DIR / f"{name}.csv") as tmp:
            confusion_table(test.labels, predicted, test.classes).to_csv(tmp, index=False)
    return results, meta


def score_probe(labeled: ImageSet, test: ImageSet) -> dict:
    """The pretrained encoder, frozen, under the `linear` strategy's converged head fitted on the
    labeled set: what the pretraining alone is worth, whatever the fine-tuning did with it."""
    device = devices.pick()
    encoder, _ = weights.load_encoder(paths.ENCODER_FILE)
    model = Classifier(encoder, len(test.classes)).to(device)
    probe_head(model, labeled, device)
    return scores(test.labels, predict(model, test.images, device), test.classes)


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def evaluate(params: Params) -> dict:
    """Write metrics/evaluate.json (headline: one column per number worth comparing across
    experiments) and metrics/evaluate_detail.json (per-class accuracy, baseline timings)."""
    test = open_split(paths.TEST_DIR)  # read a batch at a time: a test split of any size
    results, meta = score_networks(test)
    labeled = read_split(paths.LABELED_DIR)
    start = time.perf_counter()
    results[PROBE] = score_probe(labeled, test)
    probe_s, start = time.perf_counter() - start, time.perf_counter()
    k = params.checkpoint.knn_k
    results |= baselines.evaluate(labeled, test, open_split(paths.UNLABELED_DIR).images, k)
    baseline_s = time.perf_counter() - start
    metrics = {
        "strategy": strategy_of(meta["pretrained"]),
        "labels_per_class": meta["pretrained"]["labels_per_class"],
        "test_images": len(test),
        "test_set": identify_test_set(paths.TEST_DIR),
        "classes": test.classes,
        **{name: {key: r[key] for key in HEADLINE} for name, r in results.items()},
        "gain_over_scratch": {
            key: round(results["pretrained"][key] - results["scratch"][key], 4) for key in HEADLINE
        },
        "verdict": baselines.verdict(results),
    }
    detail = {
        **({"auto": meta["pretrained"]["auto"]} if "auto" in meta["pretrained"] else {}),  # the CV scores
        "per_class": {name: r["per_class"] for name, r in results.items()},
        "linear_probe_seconds": round(probe_s, 3),
        "baselines": {
            "seconds": {name: results[name]["seconds"] for name in BASELINES},
            "total_seconds": round(baseline_s, 3),
            "knn_k": k,
            "pca_components_max": baselines.PCA_COMPONENTS,
            "pca_fit_images_max": baselines.PCA_FIT_IMAGES,
        },
    }
    write_json(paths.EVALUATE_METRICS_FILE, metrics)
    write_json(paths.EVALUATE_DETAIL_FILE, detail)
    report(metrics, baseline_s, probe_s)
    return metrics


def strategy_of(meta: dict) -> str:
    """The fine-tuning strategy, or auto's choice: `auto -> propagate`."""
    return f"auto -> {meta['auto']['choice']}" if "auto" in meta else meta["strategy"]


def report(metrics: dict, baseline_s: float, probe_s: float) -> None:
    """One line per model, then the verdict in words."""
    for name in (*NETWORKS, PROBE, *BASELINES):
        r = metrics[name]
        print(f"evaluate: {name:14s} accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}")
    v = metrics["verdict"]
    print(f"evaluate: the linear probe took {probe_s:.1f} s, the baselines {baseline_s:.1f} s")
    print(f"evaluate: pretrained {'beats' if v['beats_scratch'] else 'LOSES to'} scratch and "
          f"{'beats' if v['beats_best_baseline'] else 'LOSES to'} the best baseline ({v['best_baseline']}) on accuracy")


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
