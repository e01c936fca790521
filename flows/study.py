"""The `label-budget-study` flow: which pretraining method pays off at which label budget.

study.methods x study.budgets x study.seeds (params.yaml `study:`), each against the same budget
trained from scratch. It runs in this process, without DVC: the study measures the pipeline, it
is not a stage of it. Per (method, seed) a task pretrains an encoder; per (method or scratch,
budget, seed) a task fine-tunes and tests; each holds a GPU slot of its host (flows/gpu.py), so
as many run at once as the host has GPUs. Encoders and finished runs are kept in <out>/.study-work under names
that say what made them, so a rerun (after a crash, or with one more seed) does only what is
missing.

No `from __future__ import annotations` here: Prefect validates deployment-run parameters
against the real annotations."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect.utilities.annotations import quote

from flows.gpu import ensure_host_limit, gpu_slot, visible_gpus
from prefine import fingerprint
from prefine.atomic import atomic_path
from prefine.data.ingest import Pools, read_pools
from prefine.data.store import ImageSet
from prefine.evaluate import baselines
from prefine.evaluate.study import (
    ALL,
    fine_tune_and_score,
    per_class,
    results_table,
    run_params,
    write_report,
)
from prefine.models import weights
from prefine.models.nets import EncoderSpec, spec_for
from prefine.models.objectives import load_pretrained
from prefine.params import Params, ParamsError, load, parse, resolve
from prefine.paths import PARAMS_FILE, PROFILES_FILE
from prefine.training.finetuning import SCRATCH
from prefine.training.pretraining import pretrain

WORK = ".study-work"  # under study.out; gitignored
BASELINE_ROWS = "baselines"  # the row file holding every trivial baseline of a (budget, seed)


class StudyFailed(RuntimeError):
    """Some runs failed; the finished ones are kept, so a rerun redoes only the rest."""


@dataclass
class StudyData:
    """What every run shares, read once per flow run: the split source, its unlabeled pool (in
    memory, and on disk for pretrain()), the test set, and an id of the data for work file names."""

    pools: Pools
    unlabeled: ImageSet
    unlabeled_dir: Path
    test: ImageSet
    id: str


def load_params(root: Path, profile: str | None, overrides: list[str] | None) -> Params:
    """params.yaml with `profile` and `key.path=value` overrides applied in memory only: the study
    never edits params.yaml, so it changes nothing DVC tracks."""
    path = root / PARAMS_FILE
    params = load(path)  # names a missing or broken file
    if profile is None and not overrides:
        return params
    raw = yaml.safe_load(path.read_text())
    resolve(raw, profile, overrides, root / PROFILES_FILE)
    return parse(raw, str(path))


@contextmanager
def device_slot() -> Iterator[None]:
    """A GPU slot of this host for a run in this process: CUDA_VISIBLE_DEVICES belongs to the
    process, so the held device becomes this thread's current CUDA device instead."""
    with gpu_slot() as held:
        if not held:
            yield
            return
        with torch.cuda.device(visible_gpus().index(held)):
            yield


@task(name="read-data", cache_policy=None, persist_result=False)
def read_data(params: Params, work: Path) -> StudyData:
    """Read and split the source as ingest does; fail now, not hours in, on a budget it can't fill."""
    pools = read_pools(params.ingest)
    pools.labeled(max((b for b in params.study.budgets if b != ALL), default=None), 0, key="study.budgets")
    pools.require_test()
    data_id = fingerprint.of(*(rows[["sha", "label"]].values.tolist() for rows in (pools.train, pools.test)))
    folder = work / f"unlabeled-{data_id[:12]}"
    if not (folder / "meta.json").is_file():
        pools.write(folder, "unlabeled", pools.train, keep_labels=False)
    return StudyData(pools, pools.images(pools.train, keep_labels=False), folder, pools.images(pools.test), data_id)


def encoder_file(params: Params, method: str, seed: int, data: StudyData, work: Path) -> Path:
    """Where the encoder of (method, seed) is kept, named by what makes it: params and data."""
    key = fingerprint.of(run_params(params, seed, method).pretrain.model_dump(), seed, data.id)
    return work / "pretrain" / f"{method}-seed{seed}-{key[:12]}" / "encoder.safetensors"


def scratch_spec(params: Params, data: StudyData) -> EncoderSpec:
    """The architecture of the study's encoders, which the scratch baseline trains from random init."""
    p = run_params(params, seed=0).pretrain  # the architecture is the same for every seed
    return spec_for(p, data.unlabeled.images)


def row_file(params: Params, method: str, budget: int | str, seed: int, data: StudyData, work: Path) -> Path:
    """Where a finished run's row is kept, named by what makes it: the budget, seed, fine-tune
    params and data, and the encoder it starts from (by what makes that), scratch's architecture,
    or for the baselines the kNN k."""
    if method == BASELINE_ROWS:
        origin = params.checkpoint.knn_k
    elif method == SCRATCH:
        origin = scratch_spec(params, data)
    else:
        origin = encoder_file(params, method, seed, data, work).parent.name
    key = fingerprint.of(method, budget, seed, run_params(params, seed).finetune.model_dump(), origin, data.id)
    return work / "runs" / f"{method}-{budget}-seed{seed}-{key[:12]}.json"


@task(
    task_run_name="pretrain-{method}-seed{seed}", retries=1,
    cache_policy=None, persist_result=False, log_prints=True,
)
def pretrain_encoder(params: Params, method: str, seed: int, data: StudyData, encoder: Path) -> Path:
    """Pretrain `method` with `seed` and export its encoder to `encoder`; the training state is
    saved every epoch beside it, so a retry (or a rerun after a crash) resumes, not restarts."""
    run = run_params(params, seed, method)
    with device_slot():
        pretrain(run, data.unlabeled_dir, encoder.parent / "state.pt", encoder.parent / "plots")
    objective, state = load_pretrained(encoder.parent / "state.pt")
    weights.save(encoder, objective.encoder, {"spec": state["meta"]["spec"], "method": method})
    return encoder


@task(
    task_run_name="finetune-{method}-{budget}-seed{seed}", retries=1,
    cache_policy=None, persist_result=False,
)
def finetune_run(
    params: Params, method: str, budget: int | str, seed: int, data: StudyData, encoder: Path | None, row: Path
) -> dict:
    """One row of the table: `budget` labels per class drawn with `seed`, fine-tuned from the
    encoder (from scratch when there is none), tested, and kept in `row`."""
    labeled = data.pools.images(data.pools.labeled(per_class(budget), seed, key="study.budgets"))
    with device_slot():
        start = time.perf_counter()
        p = run_params(params, seed).finetune
        scored = fine_tune_and_score(
            SCRATCH if encoder is None else p.strategy, encoder or scratch_spec(params, data), labeled, data.test, p, seed,
            data.unlabeled,
        )
        wall_s = round(time.perf_counter() - start, 1)
    result = {"method": method, "labels_per_class": budget, "seed": seed, "labeled": len(labeled), **scored,
              "wall_s": wall_s}
    with atomic_path(row) as tmp:
        tmp.write_text(json.dumps(result) + "\n")
    return result


@task(task_run_name="baselines-{budget}-seed{seed}", cache_policy=None, persist_result=False)
def baseline_run(params: Params, budget: int | str, seed: int, data: StudyData, row: Path) -> list[dict]:
    """The trivial baselines (pixel and PCA logistic regression and kNN) on exactly the labeled
    subset the networks of (budget, seed) get: rows of the same table, kept in `row`."""
    labeled = data.pools.images(data.pools.labeled(per_class(budget), seed, key="study.budgets"))
    scored = baselines.evaluate(labeled, data.test, data.unlabeled.images, params.checkpoint.knn_k)
    result = [{"method": name, "labels_per_class": budget, "seed": seed, "labeled": len(labeled),
               "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "wall_s": r["seconds"]} for name, r in scored.items()]
    with atomic_path(row) as tmp:
        tmp.write_text(json.dumps(result) + "\n")
    return result


def settings(params: Params, data: StudyData) -> dict:
    """What makes a study's numbers: its section, the sections its runs resolve from, the data."""
    run = run_params(params, seed=0)
    return {"study": params.study.model_dump(), "ingest": params.ingest.model_dump(),
            "pretrain": run.pretrain.model_dump(), "finetune": run.finetune.model_dump(),
            "knn_k": params.checkpoint.knn_k, "data": data.id}


@task(name="write-report", cache_policy=None, persist_result=False)
def report(rows: list[dict], out: Path, classes: int, made_by: dict) -> dict[str, Path]:
    """The CSV, markdown and plot in the study's own folder `out`, with settings.yaml saying what
    made them, and the markdown as an artifact of the run."""
    paths = write_report(results_table(rows), out, classes)
    with atomic_path(out / "settings.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(made_by, sort_keys=False))
    paths["settings"] = out / "settings.yaml"
    create_markdown_artifact(
        paths["md"].read_text(), key="label-budget-study", description="Test metrics per method and label budget"
    )
    return paths


@flow(name="label-budget-study")
def label_budget_study(
    repo: str = ".", profile: str | None = None, overrides: list[str] | None = None, name: str | None = None
) -> dict:
    """Pretrain every method per seed, fine-tune it and scratch at every budget, test, report.
    `overrides` are `key.path=value`, as `dvc exp run -S`, applied to this run only. The report
    goes to <study.out>/<name> (default: study-<id of its settings>), so no study overwrites
    another's numbers."""
    root = Path(repo).resolve()
    params = load_params(root, profile, overrides)
    study = params.study
    if {**params.finetune.model_dump(), **study.finetune}["strategy"] == "auto":
        raise ParamsError("finetune.strategy auto is the pipeline's choice; the study compares fixed strategies: "
                          "set study.finetune.strategy to linear, partial, full or semisup")
    out = root / study.out
    work = out / WORK
    logger = get_run_logger()
    slots = ensure_host_limit()
    data = read_data(params, work)
    shared = quote(data)  # large: Prefect must not walk it looking for futures
    encoders: dict = {}  # (method, seed) -> the kept encoder file, or the future of its pretraining

    def encoder_for(method: str, seed: int):
        """Pretrain only what some unfinished run needs and no earlier run of the study kept."""
        if method == SCRATCH:
            return None
        if (method, seed) not in encoders:
            kept = encoder_file(params, method, seed, data, work)
            if not kept.is_file():
                kept = pretrain_encoder.submit(params, method, seed, shared, kept)
            encoders[method, seed] = kept
        return encoders[method, seed]

    rows, runs = [], {}
    for seed in study.seeds:
        for budget in study.budgets:
            row = row_file(params, BASELINE_ROWS, budget, seed, data, work)
            if row.is_file():
                rows.extend(json.loads(row.read_text()))
            else:
                rows.extend(baseline_run(params, budget, seed, shared, row))
            for method in (*study.methods, SCRATCH):
                row = row_file(params, method, budget, seed, data, work)
                if row.is_file():  # finished by an earlier run of the study
                    rows.append(json.loads(row.read_text()))
                    continue
                future = finetune_run.submit(params, method, budget, seed, shared, encoder_for(method, seed), row)
                runs[future] = (method, budget, seed)
    pretrainings = sum(not isinstance(e, Path) for e in encoders.values())
    logger.info("%d runs kept from earlier; to do: %d pretrainings and %d runs, %d at a time (gpu slots)",
                len(rows), pretrainings, len(runs), slots)
    failed = []
    for done, future in enumerate(as_completed(list(runs)), 1):
        method, budget, seed = runs[future]
        try:  # the result, not a state read right after completion (the server may lag behind it)
            row = future.result()
        except Exception as exc:  # noqa: BLE001 - any failed run is reported and kept out of the table
            failed.append(f"{method} {budget}/class seed {seed}")
            logger.error("%d/%d %s, %s labels/class, seed %d: %s", done, len(runs), method, budget, seed, exc)
            continue
        rows.append(row)
        logger.info("%d/%d %s, %s labels/class, seed %d: accuracy %.4f, macro-F1 %.4f (%.1f s)", done, len(runs),
                    method, budget, seed, row["accuracy"], row["macro_f1"], row["wall_s"])
    if failed:
        raise StudyFailed(f"{len(failed)} of {len(runs)} runs failed ({'; '.join(failed)}); the finished ones are "
                          f"kept in {work}: run the study again to redo only the rest")
    made_by = settings(params, data)
    folder = out / (name or f"study-{fingerprint.of(made_by)[:8]}")
    paths = report(rows, folder, len(data.test.classes), made_by)
    return {"runs": len(rows), **{kind: str(path) for kind, path in paths.items()}}
