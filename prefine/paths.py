"""Where every pipeline file lives, relative to the project root: the one home of these paths.

dvc.yaml names the same files (a test keeps the two in step); stages, the registry and the
benchmarks import them from here, never from each other. Every name here is a path.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PROFILES_FILE = Path("profiles.yaml")
INPUTS_FILE = Path("inputs.json")  # what ingest reads, summarised (prefine/data/inputs.py): a dep of ingest

DATA_DIR = Path("data")
UNLABELED_DIR = DATA_DIR / "unlabeled"
LABELED_DIR = DATA_DIR / "labeled"
TEST_DIR = DATA_DIR / "test"

MODELS_DIR = Path("models")
PRETRAIN_STATE_FILE = MODELS_DIR / "pretrain" / "state.pt"  # the stage's output: the finished state
# where pretraining saves while it runs (not a DVC output, so DVC never deletes it before a rerun):
# a crashed run resumes from it, and the output above stays run-cacheable (DVC skips persist outputs)
PRETRAIN_RESUME_FILE = MODELS_DIR / ".pretrain-resume" / "state.pt"
ENCODER_FILE = MODELS_DIR / "encoder.safetensors"
ENCODER_CARD_FILE = MODELS_DIR / "encoder.card.json"
CLASSIFIER_FILE = MODELS_DIR / "classifier.safetensors"
SCRATCH_FILE = MODELS_DIR / "scratch.safetensors"

METRICS_DIR = Path("metrics")
INGEST_METRICS_FILE, PRETRAIN_METRICS_FILE = METRICS_DIR / "ingest.json", METRICS_DIR / "pretrain.json"
EVALUATE_METRICS_FILE = METRICS_DIR / "evaluate.json"  # headline numbers: what `dvc exp show` shows
EVALUATE_DETAIL_FILE = METRICS_DIR / "evaluate_detail.json"  # per class, baseline timings

PRETRAIN_PLOTS_DIR = Path("plots/pretrain")
FINETUNE_PLOTS_DIR = Path("plots/finetune")
CONFUSION_PLOTS_DIR = Path("plots/confusion")
GAN_SAMPLES_FILE = PRETRAIN_PLOTS_DIR / "samples.png"

VISUAL_PLOTS_DIR = Path("plots/visual")  # the visualize stage's pictures (DVC image plots)
EMBEDDING_MAP_FILE = VISUAL_PLOTS_DIR / "embedding_map.png"
NEIGHBOURS_FILE = VISUAL_PLOTS_DIR / "neighbours.png"
AUGMENTATIONS_FILE = VISUAL_PLOTS_DIR / "augmentations.png"
CLASS_GAIN_FILE = VISUAL_PLOTS_DIR / "class_gain.png"
CONFUSED_PAIRS_FILE = VISUAL_PLOTS_DIR / "confused_pairs.png"
