"""Every comparison of issue 12 in one table: the trivial baselines per label budget and, with
--networks, the profile's pretrained model, its scratch twin and its encoder's linear probe on
the same labeled subsets; mean ± std over seeds, and the seconds each took.

Labeled subsets are drawn the pipeline's way (ingest's select_labeled); every run is scored on the
whole test split. With --networks each seed pretrains its own encoder (as `dvc repro` with that
seed would) in a temporary project. Prints the tables and writes them to --out under a header
saying how they were made; --readme also rewrites the README's results table. Usage:

    OMP_NUM_THREADS=1 python benchmarks/baselines.py [--budgets 10,100] [--seeds 0,1,2]
    python benchmarks/baselines.py --networks --readme README.md    # 23 min on 2 CPU cores (session 15)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the evaluate stage runs them (tasks/evaluate.py says why)

import pandas as pd  # noqa: E402
import sklearn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.subsets import fine_tune_and_score, pretrained_encoder  # noqa: E402
from prefine.atomic import atomic_path  # noqa: E402
from prefine.data.ingest import CACHE_NAME, Pools, ingest, read_pools  # noqa: E402
from prefine.data.store import read_split  # noqa: E402
from prefine.errors import PrefineError  # noqa: E402
from prefine.evaluate import baselines  # noqa: E402
from prefine.evaluate.names import PROBE, SCRATCH  # noqa: E402
from prefine.evaluate.study import markdown, results_table, summarize  # noqa: E402
from prefine.params import Params, load_with  # noqa: E402
from prefine.training import finetuning  # noqa: E402

OUT = ROOT / "reports" / "baselines.md"
README_BEGIN = "<!-- results: made by benchmarks/baselines.py --networks --readme README.md -->"
README_END = "<!-- /results -->"


def run_baselines(pools: Pools, budgets: list[int], seeds: list[int], k: int) -> list[dict]:
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
            print(f"{budget} labels/class, seed {seed}: baselines done", file=sys.stderr, flush=True)
    return rows


def run_networks(params: Params, project: Path, budgets: list[int], seeds: list[int]) -> tuple[list[dict], dict]:
    """Per seed, pretrain in `project` (ingested there); per budget, the pretrained model (the
    profile's strategy), scratch and the linear probe; rows as run_baselines', and the seconds of
    each seed's pretraining."""
    strategy = params.finetune.strategy
    if strategy == "auto":
        raise PrefineError("--networks runs one fixed finetune.strategy; benchmarks/auto.py measures auto")
    pools = read_pools(params.ingest, project / "data" / CACHE_NAME)
    test = pools.images(pools.test)
    unlabeled = read_split(project / "data/unlabeled") if strategy in finetuning.POOLED else None
    rows, pretraining = [], {}
    for seed in seeds:
        seeded = params.model_copy(update={"seed": seed})
        start = time.perf_counter()
        encoder, _ = pretrained_encoder(seeded, project, f"encoder-seed{seed}")
        pretraining[seed] = time.perf_counter() - start
        for budget in budgets:
            labeled = pools.images(pools.labeled(budget, seed))
            for name, how in (("pretrained", strategy), (SCRATCH, SCRATCH), (PROBE, "linear")):
                start = time.perf_counter()
                score = fine_tune_and_score(how, encoder, labeled, test, params.finetune, seed, unlabeled)
                rows.append({"method": name, "labels_per_class": budget, "seed": seed, "labeled": len(labeled),
                             **score, "wall_s": time.perf_counter() - start})
                print(f"{budget} labels/class, seed {seed}, {name}: accuracy {score['accuracy']:.4f} "
                      f"({rows[-1]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return rows, pretraining


def seconds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of wall_s per (method, budget), shaped for study.markdown(..., "wall_s")."""
    grouped = table.groupby(["method", "labels_per_class"], sort=False)
    return grouped.agg(wall_s_mean=("wall_s", "mean"), wall_s_std=("wall_s", "std")).reset_index()


def per_run(table: pd.DataFrame) -> str:
    """Each run's test accuracy in markdown's layout, a column per (budget, seed): the pairs behind
    every mean, since a pretrained model and its scratch twin are compared seed by seed."""
    runs = table.assign(labels_per_class=[f"{b}, seed {s}" for b, s in table[["labels_per_class", "seed"]].values],
                        accuracy_mean=table["accuracy"], accuracy_std=float("nan"))
    return markdown(runs, "accuracy")


def readme_table(table: pd.DataFrame, params: Params, pretraining: dict) -> str:
    """The README's results table: accuracy per budget (mean ± std over seeds) and the seconds a
    run took (mean over budgets and seeds; the pretrained row adds its seed's pretraining)."""
    summary, budgets = summarize(table), list(dict.fromkeys(table["labels_per_class"]))
    per_run = table.groupby("method", sort=False)["wall_s"].mean()
    pre = sum(pretraining.values()) / len(pretraining)
    names = {"pretrained": f"pretrained ({params.pretrain.method}, `{params.finetune.strategy}`)",
             SCRATCH: "scratch, same budget", PROBE: "linear probe of the pretrained encoder",
             "pixels_logreg": "logistic regression on the pixels", "pixels_knn": "kNN on the pixels",
             "pca_logreg": "logistic regression on a PCA of the pool", "pca_knn": "kNN on a PCA of the pool"}
    lines = ["| run | " + " | ".join(f"{b} labels/class" for b in budgets) + " | seconds a run |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for method, rows in summary.groupby("method", sort=False):
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in rows[["accuracy_mean", "accuracy_std"]].values]
        run = per_run[method]
        alone = f"{run:.0f}" if run >= 10 else f"{run:.2g}"  # 219, not 2.2e+02; 0.29
        cost = f"{pre:.0f} + {run:.0f}" if method in (PROBE, "pretrained") else alone
        lines.append(f"| {names.get(method, method)} | " + " | ".join(cells) + f" | {cost} |")
    return "\n".join(lines) + "\n"


def rewrite_readme(readme: Path, block: str) -> None:
    """Replace what lies between README_BEGIN and README_END (both kept); name the file when they are missing."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise PrefineError(f"{readme}: no results block (the lines {README_BEGIN!r} and {README_END!r})")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    with atomic_path(readme) as tmp:
        tmp.write_text(f"{head}{README_BEGIN}\n{block}{README_END}{tail}")


def header(params: Params, pools: Pools, seeds: list[int], wall: float, load_before: float,
           pretraining: dict) -> str:
    """How the tables were made: command, machine and its load, data, settings."""
    command = " ".join([f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", "python", *sys.argv])
    made = (
        f"Made by `{command}` on {date.today()}: {platform.machine()}, {os.cpu_count()} cores "
        f"(1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after), "
        f"scikit-learn {sklearn.__version__}; {wall:.0f} s in all.\n"
    )
    data = (
        f"Data: {pools.params.path}; labeled subsets drawn as ingest draws them (seeds {seeds}); "
        f"tested on all {len(pools.test)} test images; PCA fitted on {min(baselines.PCA_FIT_IMAGES, len(pools.train))} of the "
        f"{len(pools.train)} unlabeled pool images (seed {baselines.PCA_SEED}), "
        f"{baselines.PCA_COMPONENTS} components; kNN cosine, k = {params.checkpoint.knn_k}. Columns: labels per class.\n"
    )
    if not pretraining:
        return f"# Trivial baselines\n\n{made}\n{data}"
    p, f = params.pretrain, params.finetune
    networks = (
        f"Networks: each seed pretrains its own encoder ({p.method}, {p.encoder} width {p.width} depth {p.depth} "
        f"pool {p.pool}, epochs {p.epochs} at batch {p.batch_size}: "
        + ", ".join(f"seed {s} {t:.0f} s" for s, t in pretraining.items())
        + f"); `pretrained` is `{f.strategy}` fine-tuning ({f.steps} steps at batch {f.batch_size}), `scratch` the "
        f"same from random init, `{PROBE}` the frozen encoder with the `linear` strategy's converged head.\n"
    )
    return f"# Pretrained, scratch and trivial baselines\n\n{made}\n{data}\n{networks}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="10,100")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--networks", action="store_true", help="also pretrain per seed and fine-tune (minutes)")
    parser.add_argument("--profile", help="a profile of profiles.yaml over params.yaml")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="key=value over params.yaml")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--readme", type=Path, help="rewrite this README's results block (needs --networks)")
    args = parser.parse_args(argv)
    if args.readme and not args.networks:
        parser.error("--readme needs --networks: the README's table has the networks' rows")
    params = load_with(ROOT, args.profile, args.overrides)
    budgets, seeds = [int(b) for b in args.budgets.split(",")], [int(s) for s in args.seeds.split(",")]
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        pretraining: dict = {}
        networks: list[dict] = []
        if args.networks:
            smallest = params.finetune.model_copy(update={"labels_per_class": min(budgets)})  # its labeled split is unused
            ingest(params.model_copy(update={"finetune": smallest}), project / "data", project / "ingest.json")
            networks, pretraining = run_networks(params, project, budgets, seeds)
        pools = read_pools(params.ingest, project / "data" / CACHE_NAME)
        table = results_table(run_baselines(pools, budgets, seeds, params.checkpoint.knn_k) + networks)
    text = "\n".join([
        header(params, pools, seeds, time.perf_counter() - start, load_before, pretraining),
        f"## Test accuracy (mean ± std over {len(seeds)} seeds)\n", markdown(summarize(table), "accuracy"),
        "## Seconds per run (fit + predict; pca_* include the PCA fit they share; networks: fine-tuning and "
        "scoring, not pretraining)\n",
        markdown(seconds(table), "wall_s"),
        "## Test accuracy of each run (columns: labels per class, seed)\n", per_run(table),
    ])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    if args.readme:
        rewrite_readme(args.readme, readme_table(table, params, pretraining))


if __name__ == "__main__":
    main()
