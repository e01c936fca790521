"""How much of pretrained-vs-scratch is the labeled subset's luck? Fine-tune a project's exported
encoder and the scratch baseline on several seeded labeled subsets of one size; print each pair
and the mean +- std of the gain.

Runs in a project whose pipeline has run (models/encoder.safetensors, params.yaml); writes
nothing. The encoder is label-free, so every subset reuses it: only the labels, the fine-tuning
seed and the head init change. Usage:

    python benchmarks/subsets.py [--budget 10] [--seeds 0,1,2] [-S finetune.steps=600 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine import paths  # noqa: E402
from prefine.data.ingest import read_pools  # noqa: E402
from prefine.data.store import read_split  # noqa: E402
from prefine.data.store import ImageSet  # noqa: E402
from prefine.evaluate.metrics import predict, scores  # noqa: E402
from prefine.evaluate.names import SCRATCH  # noqa: E402
from prefine.models import weights  # noqa: E402
from prefine.models.nets import EncoderSpec  # noqa: E402
from prefine.models.objectives import load_pretrained  # noqa: E402
from prefine.params import FinetuneParams, Params, load_with  # noqa: E402
from prefine.training import device as devices  # noqa: E402
from prefine.training import finetuning  # noqa: E402
from prefine.training.pretraining import pretrain  # noqa: E402


def fine_tune_and_score(strategy: str, encoder: Path | EncoderSpec, labeled: ImageSet, test: ImageSet,
                        p: FinetuneParams, seed: int, unlabeled: ImageSet | None) -> dict[str, float]:
    """Fine-tune the encoder with `strategy`, or its architecture from scratch (SCRATCH; finetuning.start
    pairs the two inits), on `labeled`; score on `test`."""
    model = finetuning.start(strategy, encoder, len(labeled.classes), seed, p.unfreeze)
    device = devices.pick()
    finetuning.train(model, labeled, p, strategy=strategy, seed=seed, device=device, unlabeled=unlabeled)
    result = scores(test.labels, predict(model, test.images, device), test.classes)
    return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}


def pretrained_encoder(params: Params, project: Path, name: str) -> tuple[Path, list[dict]]:
    """params.pretrain trained on project/data/unlabeled (an ingested split), exported as the
    checkpoint stage exports it: project/<name>.safetensors, and the training history."""
    state = project / f"{name}.pt"
    history = pretrain(params, project / "data/unlabeled", state, project / f"plots-{name}")
    objective, saved = load_pretrained(state)
    encoder = project / f"{name}.safetensors"
    weights.save(encoder, objective.encoder, {"spec": saved["meta"]["spec"], "method": saved["meta"]["method"]})
    return encoder, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path("."))
    parser.add_argument("--budget", type=int, default=10, help="labels per class")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value over params.yaml")
    args = parser.parse_args()
    params = load_with(args.repo, None, args.overrides)
    p = params.finetune
    encoder = args.repo / paths.ENCODER_FILE
    spec = weights.load(encoder)[1]["spec"]
    pools = read_pools(params.ingest)
    test = pools.images(pools.test)
    unlabeled = read_split(args.repo / paths.UNLABELED_DIR) if p.strategy in finetuning.POOLED else None
    print(f"{args.budget} labels/class, {p.strategy}, {p.steps} steps, encoder {encoder}")
    gains = []
    for seed in map(int, args.seeds.split(",")):
        labeled = pools.images(pools.labeled(args.budget, seed))
        start = time.perf_counter()
        pre = fine_tune_and_score(p.strategy, encoder, labeled, test, p, seed, unlabeled)["accuracy"]
        scratch = fine_tune_and_score(SCRATCH, spec, labeled, test, p, seed, unlabeled)["accuracy"]
        gains.append(pre - scratch)
        print(f"seed {seed}: pretrained {pre:.4f}  scratch {scratch:.4f}  gain {pre - scratch:+.4f}"
              f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"gain over {len(gains)} subsets: {statistics.mean(gains):+.4f} +- {spread:.4f} (std)")


if __name__ == "__main__":
    main()
