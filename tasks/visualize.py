"""visualize stage: the pictures of a run under plots/visual (DVC image plots), after evaluate:
a t-SNE map of test embeddings, nearest unlabeled neighbours, the augmentation preview,
per-class gains and the most confused pairs (prefine/evaluate/visuals.py draws them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pandas as pd

from prefine import paths
from prefine.data.store import open_split
from prefine.evaluate import visuals
from prefine.evaluate.gallery import class_gains
from prefine.evaluate.metrics import confusion_from_table
from prefine.models import weights
from prefine.params import Params
from prefine.training import device as devices
from tasks.stage import run_stage


def timed(name: str, draw: Callable[[], None]) -> None:
    """Draw one picture and say how long it took: the stage must stay cheap on the default run."""
    start = time.perf_counter()
    draw()
    print(f"visualize: {name} {time.perf_counter() - start:.1f} s")


def visualize(params: Params) -> None:
    """Draw every picture of plots/visual, each timed; the t-SNE map shows the label-free encoder
    beside both classifiers' encoders, so what pretraining alone learned is in view too. The
    splits stay on disk: a picture reads the rows it needs, so a pool of millions fits."""
    device = devices.pick()
    test = open_split(paths.TEST_DIR)
    encoder, _ = weights.load_encoder(paths.ENCODER_FILE)
    pretrained, _ = weights.load_classifier(paths.CLASSIFIER_FILE)
    scratch, _ = weights.load_classifier(paths.SCRATCH_FILE)
    encoders = {"pretrained encoder (no labels)": encoder, "fine-tuned from it": pretrained.encoder,
                "scratch (same labels)": scratch.encoder}
    timed("embedding map", lambda: visuals.embedding_map(encoders, test, paths.EMBEDDING_MAP_FILE, device))
    pool = open_split(paths.UNLABELED_DIR).images
    timed("neighbours", lambda: visuals.neighbours(encoder, test, pool, paths.NEIGHBOURS_FILE, device))
    labeled = open_split(paths.LABELED_DIR)
    timed("augmentations", lambda: visuals.augmentation_preview(labeled, params, paths.AUGMENTATIONS_FILE))
    gains = class_gains(json.loads(paths.EVALUATE_DETAIL_FILE.read_text()))
    timed("class gains", lambda: visuals.class_gain_chart(gains, paths.CLASS_GAIN_FILE))
    counts = {name: confusion_from_table(pd.read_csv(paths.CONFUSION_PLOTS_DIR / f"{name}.csv"), len(test.classes))
              for name in ("pretrained", "scratch")}
    timed("confused pairs", lambda: visuals.confused_pairs(pretrained, test, counts, paths.CONFUSED_PAIRS_FILE, device))


if __name__ == "__main__":
    run_stage("visualize", visualize)
