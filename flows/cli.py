"""`prefine`: the common moves. Flows are imported inside their commands, so `prefine --help`
and the registry commands start without loading Prefect.

Exit codes: 0 done; 1 a registry or study problem; 2 a params, profile or project problem
(nothing was changed); 3 some inputs of predict/embed failed; 10 + the stage's index in dvc.yaml when a stage failed.
Each failure is one line naming the file, key or stage, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
)
from rich.table import Table

from flows.deploy_cli import deploy
from flows.plots_cli import plots
from flows.report_page import report
from flows.summary import RUN_DECISION, StageClock
from flows.summary import show as show_summary
from flows.use_cli import embed, predict
from prefine import registry as reg
from prefine.errors import PrefineError

app = typer.Typer(help="Prefine: pretrain, fine-tune, register. DVC runs the stages; Prefect orchestrates.")
registry_app = typer.Typer(help="The model registry (GTO): versions, prod, rollback.")
app.add_typer(registry_app, name="registry")
console = Console()

Repo = Annotated[Path, typer.Option("--repo", "-r", help="The project (DVC + git) folder.")]
Profile = Annotated[Optional[str], typer.Option(help="Write this profile (profiles.yaml) into params.yaml first.")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="key.path=value, like `dvc exp run -S`.")]


def _fail(message: str, code: int) -> NoReturn:
    console.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _project(repo: Path) -> Path:
    """`repo` if it is a Prefine project (dvc.yaml and params.yaml), else exit 2 saying so."""
    for name in ("dvc.yaml", "params.yaml"):
        if not (repo / name).is_file():
            _fail(f"{repo.resolve()}: not a Prefine project (no {name}); run from its root or pass --repo", 2)
    return repo


@app.command()
def profile(
    name: Annotated[Optional[str], typer.Argument(help="Profile to write into params.yaml.")] = None,
    repo: Repo = Path("."),
) -> None:
    """Write a profile's values into params.yaml (DVC then reruns what they change); without
    NAME, list the profiles and mark those params.yaml matches now."""
    from flows.overrides import apply
    from prefine.params import load_profiles, matching_profiles
    from prefine.paths import PARAMS_FILE, PROFILES_FILE

    _project(repo)
    try:
        if name is not None:
            changed = apply(repo, name)
            console.print(f"params.yaml: profile {name} {'written' if changed else 'already in place'}")
            return
        profiles = load_profiles(repo / PROFILES_FILE)
        current = set(matching_profiles(yaml.safe_load((repo / PARAMS_FILE).read_text()), profiles))
    except PrefineError as exc:
        _fail(str(exc), 2)
    for known in profiles:
        console.print(f"{'*' if known in current else ' '} {known}")


@app.command()
def index(repo: Repo = Path(".")) -> None:
    """Refresh inputs.json, the list of every file ingest reads, so `dvc status` / `dvc repro`
    see images added to symlinked folders or named by a manifest (prefine run and flows do it too)."""
    from flows.dvc import refresh_inputs

    _project(repo)
    try:
        changed = refresh_inputs(repo)
    except PrefineError as exc:
        _fail(str(exc), 2)
    console.print(f"inputs.json: {'changed: ingest will rerun' if changed else 'unchanged'}")


@app.command()
def run(repo: Repo = Path("."), profile: Profile = None, set_: Overrides = None) -> None:
    """`dvc repro` the whole pipeline (no Prefect), with a progress bar per stage."""
    from flows.dvc import Snapshot, refresh_inputs, run_lock
    from flows.overrides import apply

    _project(repo)
    with run_lock(repo):
        before = Snapshot.take(repo)
        try:
            apply(repo, profile, set_)
        except PrefineError as exc:
            before.discard()
            _fail(str(exc), 2)
        try:
            refresh_inputs(repo)
        except PrefineError as exc:
            before.discard()
            _fail(str(exc), 2)
        stages, started, returncode, clock = _repro(repo)
        if returncode == 0:
            before.discard()
            show_summary(console, repo, clock.outcomes, clock.seconds, RUN_DECISION)
            return
        before.restore()
    if not started:
        _fail("dvc repro failed before any stage ran (its output is above); nothing was changed", 1)
    failed = next(s for s in reversed(stages) if s in started)
    _fail(f"stage '{failed}' failed (its output is above); params.yaml, dvc.lock and the outputs are as "
          "they were before this run", 10 + stages.index(failed))


def _repro(repo: Path) -> tuple[list[str], set[str], int, StageClock]:
    """`dvc repro` with a bar per stage; returns the stages, those that started, DVC's exit code
    and each stage's outcome and wall time."""
    from flows.dvc import run_dvc, stages_of

    stages = stages_of(repo)
    clock = StageClock(stages)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    started: set[str] = set()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("dvc repro", total=len(stages))

        def on_line(line: str) -> None:
            progress.console.print(line, markup=False, highlight=False)
            clock.see(line)
            for stage in stages:
                if f"stage '{stage}'" in line.lower() and stage not in started:
                    started.add(stage)
                    progress.update(bar, description=stage, completed=len(started) - 1)

        result = run_dvc(repo, ["repro"], on_line)
        clock.stop()
        if result.returncode == 0:
            progress.update(bar, description="done", completed=len(stages))
    return stages, started, result.returncode, clock


class _NoTraceback(logging.Formatter):
    """Prefect's console format without exception tracebacks: the CLI ends a failure with one
    line, and the full traceback stays in the run's logs on the Prefect server."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(bare)


def _quiet_console() -> None:
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # a temporary server's telemetry only adds noise
    setup_logging()  # later setups in this process are incremental: they keep these formatters
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter or logging.Formatter()))


def _run_flow(repo: Path, call) -> dict:
    """Run a flow; map failures to exit codes: 10 + stage index, 2 for a params problem."""
    from flows.dvc import stages_of
    from flows.stages import StageFailed

    _quiet_console()
    try:
        return call()
    except StageFailed as exc:
        _fail(str(exc), 10 + stages_of(repo).index(exc.stage))
    except PrefineError as exc:
        _fail(str(exc), 2)


@app.command()
def flow(
    repo: Repo = Path("."),
    profile: Profile = None,
    set_: Overrides = None,
    register: Annotated[Optional[bool], typer.Option(
        "--register/--no-register",
        help="Register the result through the promotion gate (default: unless a smoke run, ingest.limit set).",
        show_default=False)] = None,
    retries: Annotated[int, typer.Option(help="Retries of the training stages.")] = 2,
    retry_delay: Annotated[float, typer.Option(help="Seconds between retries.")] = 5.0,
    retry_jitter: Annotated[float, typer.Option(help="Random extra delay, as a fraction of it.")] = 0.5,
) -> None:
    """Run the `training` Prefect flow (stages through DVC, then register)."""
    from flows.report import outcome_message
    from flows.training import training

    _project(repo)
    summary = _run_flow(repo, lambda: training(
        repo=str(repo.resolve()), profile=profile, overrides=set_, register_model=register,
        retries=retries, retry_delay=retry_delay, retry_jitter=retry_jitter,
    ))
    show_summary(console, repo, summary["stages"], summary["seconds"], outcome_message(summary))


@app.command()
def retrain(repo: Repo = Path(".")) -> None:
    """Run the `retrain` flow once: train and register only if the data changed."""
    from flows.retrain import retrain as retrain_flow

    _project(repo)
    console.print(_run_flow(repo, lambda: retrain_flow(repo=str(repo.resolve()))))


@app.command()
def study(
    repo: Repo = Path("."),
    profile: Profile = None,
    set_: Overrides = None,
    name: Annotated[Optional[str], typer.Option(help="Report folder under study.out (default: from the settings).")] = None,
    deployment: Annotated[Optional[str], typer.Option(
        help="Run the cells as flow runs of this deployment on its work pool, e.g. training/prefine-training "
             "(default: one after the other here).")] = None,
) -> None:
    """Run the label-budget study (params.yaml `study:`) as a Prefect flow: each cell (method,
    budget, seed) a run of the pipeline kept as a DVC experiment of HEAD; writes reports/.
    --profile and -S apply to this run only: params.yaml is left as it is."""
    from flows.study import StudyFailed, label_budget_study

    _project(repo)
    try:
        summary = _run_flow(repo, lambda: label_budget_study(repo=str(repo.resolve()), profile=profile, overrides=set_,
                                                             name=name, deployment=deployment))
    except StudyFailed as exc:
        _fail(str(exc), 1)
    console.print(summary)


@app.command()
def serve(
    repo: Repo = Path("."),
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, server time zone).")] = "0 3 * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "prefine-retrain",
) -> None:
    """Serve the scheduled `retrain` deployment (needs a Prefect server: `prefect server start`)."""
    from flows.deploy import serve as serve_deployment

    _project(repo)
    serve_deployment(str(repo), cron, name)


def _score(version: reg.Version, key: str, section: str = "pretrained") -> str:
    value = (version.metrics.get(section) or {}).get(key)
    return "-" if value is None else f"{value:.4f}"


@registry_app.command("list")
def list_versions(repo: Repo = Path(".")) -> None:
    """Every classifier version with its test metrics; the prod one is marked."""
    _project(repo)
    current = reg.prod(repo)
    table = Table("version", "stage", "accuracy", "macro-F1", "gain over scratch", "commit", "created", "note")
    for v in reg.versions(repo):
        stage = "prod" if current and current.version == v.version else ""
        table.add_row(v.version, stage, _score(v, "accuracy"), _score(v, "macro_f1"),
                      _score(v, "accuracy", "gain_over_scratch"), v.commit[:8], v.created_at[:19], v.message)
    console.print(table)


@registry_app.command()
def show(repo: Repo = Path(".")) -> None:
    """The classifier version in prod, and why it is prod (the gate's reason, or the rollback's)."""
    _project(repo)
    assignment = reg.prod_assignment(repo)
    if assignment is None:
        _fail("no version is in prod yet", 1)
    current = assignment.version
    console.print(f"prod: {reg.CLASSIFIER_ARTIFACT} {current.version} (commit {current.commit[:8]}), "
                  f"accuracy {_score(current, 'accuracy')}, macro-F1 {_score(current, 'macro_f1')}")
    console.print(f"why: {assignment.message}", markup=False, highlight=False)
    console.print(f"registered: {current.message}", markup=False, highlight=False)


@registry_app.command()
def rollback(
    repo: Repo = Path("."),
    to: Annotated[Optional[str], typer.Option(help="Version to put in prod (default: one step back in prod's history).")] = None,
    force: Annotated[bool, typer.Option(help="Allow a version the promotion gate rejected (needs --reason).")] = False,
    reason: Annotated[Optional[str], typer.Option(help="Why; recorded in the prod tag's message.")] = None,
) -> None:
    """Put an earlier version back in prod; each rollback steps one further back. Recorded as a
    Prefect event (prefine.registry.rollback) when a Prefect API is configured."""
    from flows.report import record_rollback

    _project(repo)
    try:
        previous = reg.prod(repo)
        target = reg.rollback(repo, to, force, reason)
    except PrefineError as exc:
        _fail(str(exc), 1)
    console.print(f"prod is now {reg.CLASSIFIER_ARTIFACT} {target.version} (commit {target.commit[:8]})")
    unrecorded = record_rollback(repo.resolve(), previous.version, reg.prod_assignment(repo))
    if unrecorded:
        console.print(f"[yellow]warning:[/yellow] {escape(unrecorded)}", markup=True, highlight=False, soft_wrap=True)


app.command()(predict)
app.command()(embed)
app.command("plots")(plots)
app.command("report")(report)
app.command()(deploy)


if __name__ == "__main__":
    sys.exit(app())
