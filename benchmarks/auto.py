"""`finetune.strategy: auto` against every fixed recipe it considers, on the test split.

In a project after `dvc repro` (its encoder and params): for each label budget and seed, the
labeled subset ingest would pick (Pools.labeled) is fine-tuned with every strategy auto
considers (prefine.training.auto.grid) at the project's finetune params, and auto chooses one of
them by cross-validation on that subset alone. Auto's final model is the chosen strategy's fixed
run (the same seeded call), so its test accuracy is read from that row. Usage:

    python benchmarks/auto.py PROJECT [--budgets 10,100] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine import params as params_mod  # noqa: E402
from prefine import paths  # noqa: E402
from prefine.data.ingest import read_pools  # noqa: E402
from prefine.data.store import read_split  # noqa: E402
from prefine.evaluate.metrics import predict  # noqa: E402
from prefine.training import auto, finetuning  # noqa: E402
from prefine.training import device as devices  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--budgets", default="10,100", help="labels per class")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    os.chdir(args.project)
    params = params_mod.load()
    p = params.finetune.model_copy(update={"strategy": "auto"})
    pools = read_pools(params.ingest)
    test = pools.images(pools.test)
    unlabeled = read_split(paths.UNLABELED_DIR)
    device = devices.pick()
    print(f"finetune steps {p.steps}, batch {p.batch_size}, {p.auto_folds} folds, budget {p.auto_budget}x (at most); "
          f"test {len(test)} images")
    print(f"{'labels/class':>12} {'seed':>4}  {'strategy':<20} {'test acc':>8} {'seconds':>8}")
    for budget in map(int, args.budgets.split(",")):
        for seed in map(int, args.seeds.split(",")):
            data = pools.images(pools.labeled(budget, seed))
            fixed = {}
            for strategy in auto.grid(unlabeled):
                start = time.perf_counter()
                q = p.model_copy(update={"strategy": strategy})
                model = finetuning.start(strategy, paths.ENCODER_FILE, len(data.classes), seed, q.unfreeze)
                finetuning.train(model, data, q, strategy, seed, device, unlabeled=unlabeled)
                fixed[strategy] = (predict(model, test.images, device).cpu() == test.labels).float().mean().item()
                print(f"{budget:>12} {seed:>4}  {strategy:<20} {fixed[strategy]:>8.4f} "
                      f"{time.perf_counter() - start:>8.1f}", flush=True)
            _, record = auto.choose(paths.ENCODER_FILE, data, p, seed, device, unlabeled=unlabeled)
            chosen = fixed[record["choice"]]
            print(f"{budget:>12} {seed:>4}  {'auto -> ' + record['choice']:<20} {chosen:>8.4f} "
                  f"{record['seconds']:>8.1f}  (CV only)")
            print(f"{'':>18}best fixed {max(fixed.values()):.4f}, worst {min(fixed.values()):.4f}, "
                  f"auto - best {chosen - max(fixed.values()):+.4f}", flush=True)
            cv = ", ".join(f"{s} {a:.4f} (gap se {record['cv_gap_se'][s]:.4f})" for s, a in record["cv_accuracy"].items())
            print(f"{'':>18}held-out: {cv}; {record['cv_steps']} steps a fit", flush=True)


if __name__ == "__main__":
    main()
