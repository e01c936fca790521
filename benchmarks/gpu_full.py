"""The `full` profile's accuracy on one GPU inside a wall-clock budget: ingest, pretrain once,
then at each label budget a linear probe and the profile's fine-tuning from the pretrained encoder,
next to the pixel/PCA baselines on the same labeled set and the full test split.

Made for a short loan of a GPU: pretraining epochs and fine-tuning steps are the profile's, cut to
fit `--minutes` from timed first runs (each row says what it ran; the fine-tunings of a budget
run the same steps, but for the linear probe, which is fitted to convergence and takes none;
a run's fixed cost, such as each round's propagation, is timed apart from its steps). Every row
is printed and written to --out/gpu_full.json as it comes, so a run stopped early keeps what it
measured.
No scratch twins (the full profile's targets are absolute). Usage:

    python benchmarks/gpu_full.py --data /usr/share/datasets/fashion-mnist --minutes 6 --out OUT
    python benchmarks/gpu_full.py --minutes 1 -S ingest.limit=2000 -S pretrain.width=8    # CPU smoke test
    python benchmarks/gpu_full.py --profile default -S pretrain.epochs=8 --strategies linear --budgets 10,100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.subsets import fine_tune_and_score, pretrained_encoder  # noqa: E402
from prefine.data.ingest import CACHE_NAME, ingest, read_pools  # noqa: E402
from prefine.data.store import ImageSet, read_split  # noqa: E402
from prefine.evaluate.baselines import evaluate as baselines  # noqa: E402
from prefine.params import FinetuneParams, Params, load_with  # noqa: E402
from prefine.training import device as devices  # noqa: E402
from prefine.training import finetuning  # noqa: E402
from prefine.training.pretraining import pretrain  # noqa: E402

PRETRAIN_SHARE = 0.4  # of --minutes, calibration included; the label budgets share the rest equally
CALIBRATION_STEPS = 100  # each fine-tuning is timed at this many steps and twice as many to size a budget's runs


def fixed_and_per_unit(seconds_for: Callable[[int], float], units: int) -> tuple[float, float]:
    """(seconds outside the units, seconds a unit) of a run, from runs of `units` and twice as
    many: a first run's one-off work (k-means, warm-up, a propagation, the linear probe's fit)
    kept apart from the epochs or steps that scale."""
    one, two = seconds_for(units), seconds_for(2 * units)
    per_unit = max(0.0, (two - one) / units)
    return max(0.0, one - units * per_unit), per_unit


def sized_pretraining(params: Params, project: Path, seconds: float) -> tuple[Path, dict]:
    """One and two epochs timed, then the profile's epochs or as many as fit `seconds`; the encoder file."""
    unlabeled = project / "data/unlabeled"

    def seconds_for(epochs: int) -> float:
        start = time.perf_counter()
        pretrain(params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"epochs": epochs})}),
                 unlabeled, project / f"calibration-{epochs}.pt", project / "plots-calibration")
        return time.perf_counter() - start

    fixed, epoch_s = fixed_and_per_unit(seconds_for, 1)
    epochs = max(1, min(params.pretrain.epochs, int((seconds - fixed) / max(epoch_s, 1e-3))))
    start = time.perf_counter()
    sized = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"epochs": epochs})})
    encoder, history = pretrained_encoder(sized, project, "encoder")
    wall = time.perf_counter() - start
    return encoder, {"epochs": epochs, "of": params.pretrain.epochs, "seconds": round(wall, 1),
                     "fixed_s": round(fixed, 1), "epoch_s": round(epoch_s, 1), "final_loss": history[-1]["loss"],
                     "images_per_s": round(history[-1]["images"] / wall)}


def cost(strategy: str, p: FinetuneParams, encoder: Path, labeled: ImageSet, unlabeled: ImageSet,
         seed: int) -> tuple[float, float]:
    """(seconds a fine-tuning with `strategy` spends outside its steps, seconds a step); one
    propagation a run."""
    def seconds_for(steps: int) -> float:
        q = p.model_copy(update={"steps": steps, "rounds": 1})
        model = finetuning.start(strategy, encoder, len(labeled.classes), seed, q.unfreeze)
        start = time.perf_counter()
        finetuning.train(model, labeled, q, strategy=strategy, seed=seed, device=devices.pick(), unlabeled=unlabeled)
        return time.perf_counter() - start

    return fixed_and_per_unit(seconds_for, CALIBRATION_STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX folder")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget after ingest")
    parser.add_argument("--budgets", default="10,100,1", help="labels per class, in the order run")
    parser.add_argument("--strategies", help="fine-tunings per budget, same steps each (default: linear and the profile's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value over the profile")
    args = parser.parse_args()
    params = load_with(ROOT, args.profile, [f"ingest.path={args.data}", f"seed={args.seed}", *args.overrides])
    device = devices.pick()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows: list[dict] = []

    def report(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_full.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                             "profile": args.profile, "rows": rows}, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        start = time.perf_counter()
        counts = ingest(params, project / "data", project / "ingest.json")
        report({"step": "ingest", "seconds": round(time.perf_counter() - start, 1), **counts})
        budget_s = 60 * args.minutes
        encoder, pretrained = sized_pretraining(params, project, PRETRAIN_SHARE * budget_s)
        report({"step": "pretrain", "method": params.pretrain.method, "device": name, **pretrained})
        pools = read_pools(params.ingest, project / "data" / CACHE_NAME)
        test = pools.images(pools.test)
        unlabeled = read_split(project / "data/unlabeled")
        budgets = [int(b) for b in args.budgets.split(",")]
        share = (1 - PRETRAIN_SHARE) * budget_s / len(budgets)
        for budget in budgets:
            labeled = pools.images(pools.labeled(budget, args.seed))
            start = time.perf_counter()
            base = baselines(labeled, test, unlabeled.images, params.checkpoint.knn_k)
            row = {"step": "finetune", "labels_per_class": budget,
                   **{k: round(v["accuracy"], 4) for k, v in base.items()}}
            costs = {strategy: cost(strategy, params.finetune, encoder, labeled, unlabeled, args.seed)
                     for strategy in (args.strategies or f"linear,{params.finetune.strategy}").split(",")}
            left = 0.9 * (share - (time.perf_counter() - start))
            left -= sum(fixed * (params.finetune.rounds if s == "propagate" else 1) for s, (fixed, _) in costs.items())
            per_step = sum(step for _, step in costs.values())
            fit = params.finetune.steps if per_step == 0 else int(left / per_step)
            steps = max(CALIBRATION_STEPS, min(params.finetune.steps, fit))
            p = params.finetune.model_copy(update={"steps": steps})
            row = {**row, "steps": steps, "of": params.finetune.steps, "rounds": params.finetune.rounds,
                   **{f"{k}_ms_per_step": round(1000 * v[1], 2) for k, v in costs.items()},
                   **{f"{k}_fixed_s": round(v[0], 1) for k, v in costs.items()}}
            for strategy in costs:
                timed = time.perf_counter()
                accuracy = fine_tune_and_score(strategy, encoder, labeled, test, p, args.seed, unlabeled)["accuracy"]
                row[strategy] = round(accuracy, 4)
                row[f"{strategy}_seconds"] = round(time.perf_counter() - timed, 1)
            report(row)


if __name__ == "__main__":
    main()
