"""The trivial baselines' test accuracy per label budget, mean +- std over seeded labeled subsets
drawn the pipeline's way (ingest's select_labeled), and the seconds each took.

Reads the source params.yaml names (the whole test split, the whole unlabeled pool); prints the
tables and writes them to reports/baselines.md under a header saying how they were made. Usage:

    OMP_NUM_THREADS=1 python benchmarks/baselines.py [--budgets 10,100] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the evaluate stage runs them (tasks/evaluate.py says why)

import pandas as pd  # noqa: E402
import sklearn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefine import paths  # noqa: E402
from prefine.atomic import atomic_path  # noqa: E402
from prefine.data.ingest import Pools, read_pools  # noqa: E402
from prefine.evaluate import baselines  # noqa: E402
from prefine.evaluate.study import markdown, results_table, summarize  # noqa: E402
from prefine.params import load  # noqa: E402

OUT = ROOT / "reports" / "baselines.md"


def run(pools: Pools, budgets: list[int], seeds: list[int], k: int) -> pd.DataFrame:
    """One row per (baseline, budget, seed) in the study's table layout (wall_s: its seconds)."""
    test = pools.images(pools.test)
    unlabeled = pools.images(pools.train, keep_labels=False).images
    rows = []
    for budget in budgets:
        for seed in seeds:
            labeled = pools.images(pools.labeled(budget, seed))
            for name, r in baselines.evaluate(labeled, test, unlabeled, k).items():
                rows.append({"method": name, "labels_per_class": budget, "seed": seed, "labeled": len(labeled),
                             "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "wall_s": r["seconds"]})
            print(f"{budget} labels/class, seed {seed}: done", file=sys.stderr, flush=True)
    return results_table(rows)


def seconds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of wall_s per (baseline, budget), shaped for study.markdown(..., "wall_s")."""
    grouped = table.groupby(["method", "labels_per_class"], sort=False)
    return grouped.agg(wall_s_mean=("wall_s", "mean"), wall_s_std=("wall_s", "std")).reset_index()


def header(pools: Pools, seeds: list[int], k: int, wall: float, load_before: float) -> str:
    """How the tables were made: command, machine and its load, data, settings."""
    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", "python", *sys.argv])
    made = (
        f"Made by `{command}` on {date.today()}: {platform.machine()}, {os.cpu_count()} cores "
        f"(1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after), "
        f"scikit-learn {sklearn.__version__}; {wall:.0f} s in all.\n"
    )
    data = (
        f"Data: {pools.params.path}; labeled subsets drawn as ingest draws them (seeds {seeds}); "
        f"tested on all {len(pools.test)} test images; PCA fitted on {baselines.PCA_FIT_IMAGES} of the "
        f"{len(pools.train)} unlabeled pool images (seed {baselines.PCA_SEED}), "
        f"{baselines.PCA_COMPONENTS} components; kNN cosine, k = {k}. Columns: labels per class.\n"
    )
    return f"# Trivial baselines\n\n{made}\n{data}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / paths.PARAMS_FILE)
    parser.add_argument("--budgets", default="10,100")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    params = load(args.params)
    budgets, seeds = [int(b) for b in args.budgets.split(",")], [int(s) for s in args.seeds.split(",")]
    load_before, start = os.getloadavg()[0], time.perf_counter()
    pools = read_pools(params.ingest)
    table = run(pools, budgets, seeds, params.checkpoint.knn_k)
    text = "\n".join([
        header(pools, seeds, params.checkpoint.knn_k, time.perf_counter() - start, load_before),
        f"## Test accuracy (mean ± std over {len(seeds)} seeds)\n", markdown(summarize(table), "accuracy"),
        "## Seconds per baseline (fit + predict; pca_* include the PCA fit they share)\n",
        markdown(seconds(table), "wall_s"),
    ])
    print(text)
    with atomic_path(OUT) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
