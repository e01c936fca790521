"""Where every pipeline file lives, relative to the project root: the one home of these paths.

dvc.yaml names the same files (a test keeps the two in step); stages, the registry and the
benchmarks import them from here, never from each other. Every name here is a path.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PROFILES_FILE = Path("profiles.yaml")

DATA_DIR = Path("data")
UNLABELED_DIR = DATA_DIR / "unlabeled"
LABELED_DIR = DATA_DIR / "labeled"
TEST_DIR = DATA_DIR / "test"

PRETRAIN_STATE_FILE = Path("models/pretrain/state.pt")
ENCODER_FILE = Path("models/encoder.safetensors")
ENCODER_CARD_FILE = Path("models/encoder.card.json")
CLASSIFIER_FILE = Path("models/classifier.safetensors")
SCRATCH_FILE = Path("models/scratch.safetensors")

INGEST_METRICS_FILE = Path("metrics/ingest.json")
PRETRAIN_METRICS_FILE = Path("metrics/pretrain.json")
EVALUATE_METRICS_FILE = Path("metrics/evaluate.json")
EVALUATE_DETAIL_FILE = Path("metrics/evaluate_detail.json")

PRETRAIN_PLOTS_DIR = Path("plots/pretrain")
FINETUNE_PLOTS_DIR = Path("plots/finetune")
CONFUSION_PLOTS_DIR = Path("plots/confusion")
GAN_SAMPLES_FILE = PRETRAIN_PLOTS_DIR / "samples.png"
