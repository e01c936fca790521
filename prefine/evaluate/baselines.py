"""Trivial baselines every comparison carries: logistic regression and cosine kNN on raw pixels
and on a PCA of the unlabeled pool, trained on the same labeled set as the networks and scored
on the same test set. A pretrained encoder that cannot beat these has not earned its cost.

scikit-learn on the CPU, a few seconds at 100 labels per class: cheap enough for every run.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from prefine.data.store import ImageSet, Pixels, gather
from prefine.evaluate.metrics import scores
from prefine.evaluate.names import BASELINES
from prefine.models.nets import to_float

PCA_COMPONENTS = 50
PCA_FIT_IMAGES = 10_000  # the PCA's cost is bounded whatever the pool's size
PCA_SEED = 0  # the same sample, hence the same projection, on every run
TEST_CHUNK = 4096  # test images scored at a time: memory bounded by this, not by the test split
LOGREG_MAX_ITER = 1000  # lbfgs converges in about 220 iterations on 1000 Fashion-MNIST images


def pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, C, H, W] as float32 [N, C*H*W] in [0, 1], scaled as the networks see them."""
    return to_float(images).flatten(1).numpy()


def fit_pca(unlabeled: torch.Tensor | Pixels, components: int) -> PCA:
    """PCA of at most PCA_FIT_IMAGES unlabeled images drawn with PCA_SEED: label-free like
    pretraining, and fast on a pool of any size."""
    rng = np.random.default_rng(PCA_SEED)
    sample = np.sort(rng.choice(len(unlabeled), min(len(unlabeled), PCA_FIT_IMAGES), replace=False))
    fit = pixels(gather(unlabeled, sample))
    n = min(components, *fit.shape)
    return PCA(n, svd_solver="randomized", random_state=PCA_SEED).fit(fit)


def _classifiers(k: int, n_labeled: int) -> dict[str, LogisticRegression | KNeighborsClassifier]:
    """Fresh, default-ish models; k is capped at the labeled count (sklearn refuses more)."""
    return {
        "logreg": LogisticRegression(max_iter=LOGREG_MAX_ITER),
        "knn": KNeighborsClassifier(n_neighbors=min(k, n_labeled), metric="cosine", algorithm="brute"),
    }


def predict(labeled: ImageSet, test: torch.Tensor | Pixels, unlabeled: torch.Tensor | Pixels,
            k: int) -> dict[str, tuple[torch.Tensor, float]]:
    """Per baseline (BASELINES order): predicted class per test image, and the seconds it took
    (fit and predict; the pca_* ones also count the PCA fit and projections they share).
    Trained on `labeled` alone (in memory: it is the label budget), so a class missing from it
    is never predicted; the test images are read TEST_CHUNK at a time, in memory or from disk.
    One BLAS thread: these problems are small, and on a busy 2-core machine OpenBLAS's threads
    made the pixel logistic regression 14-25 s instead of 0.6 s."""
    with threadpool_limits(limits=1):
        return _predict(labeled, test, unlabeled, k)


def _predict(labeled: ImageSet, test: torch.Tensor | Pixels, unlabeled: torch.Tensor | Pixels,
             k: int) -> dict[str, tuple[torch.Tensor, float]]:
    y, train_x = labeled.labels.numpy(), pixels(labeled.images)
    start = time.perf_counter()
    pca = fit_pca(unlabeled, min(PCA_COMPONENTS, len(labeled)))
    train = {"pixels": train_x, "pca": pca.transform(train_x)}
    shared = {"pixels": 0.0, "pca": time.perf_counter() - start}  # what a space costs its classifiers
    models, seconds = {}, {}
    for space, x in train.items():
        for kind, model in _classifiers(k, len(labeled)).items():
            start = time.perf_counter()
            models[space, kind] = model.fit(x, y)
            seconds[space, kind] = time.perf_counter() - start
    predicted: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in models}
    for first in range(0, len(test), TEST_CHUNK):
        x = pixels(gather(test, np.arange(first, min(first + TEST_CHUNK, len(test)))))
        start = time.perf_counter()
        chunk = {"pixels": x, "pca": pca.transform(x)}
        shared["pca"] += time.perf_counter() - start
        for (space, kind), model in models.items():
            start = time.perf_counter()
            predicted[space, kind].append(model.predict(chunk[space]))
            seconds[space, kind] += time.perf_counter() - start
    return {f"{space}_{kind}": (torch.from_numpy(np.concatenate(predicted[space, kind])),
                                shared[space] + seconds[space, kind]) for space, kind in models}


def evaluate(labeled: ImageSet, test: ImageSet, unlabeled: torch.Tensor | Pixels, k: int) -> dict[str, dict]:
    """Per baseline: metrics.scores on `test` (accuracy, macro_f1, per_class) plus `seconds`."""
    return {
        name: {**scores(test.labels, predicted, test.classes), "seconds": round(seconds, 3)}
        for name, (predicted, seconds) in predict(labeled, test.images, unlabeled, k).items()
    }


def verdict(results: dict[str, dict], metric: str = "accuracy") -> dict[str, bool | str]:
    """Whether `pretrained` beats `scratch` and the best of BASELINES on `metric`, strictly:
    a tie is a loss, since pretraining costs more than either."""
    best = max(BASELINES, key=lambda name: results[name][metric])
    ours = results["pretrained"][metric]
    return {
        "beats_scratch": ours > results["scratch"][metric],
        "beats_best_baseline": ours > results[best][metric],
        "best_baseline": best,
    }
