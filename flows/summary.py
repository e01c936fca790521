"""How `prefine run` and `prefine flow` end: a table of the stages (outcome, wall time), one of
the headline metrics (metrics/evaluate.json: pretrained, scratch, best baseline, verdict) and the
registry decision in words, so the result reads at a glance instead of as a Python dict."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prefine.paths import EVALUATE_METRICS_FILE

# what `dvc repro` prints when it reaches a stage, and the outcome it means
OUTCOMES = {"running stage": "ran", "didn't change": "up to date", "is cached": "restored from run cache"}
RUN_DECISION = "not registered: `prefine run` never registers (`prefine flow` does)"


class StageClock:
    """Each stage's outcome and wall time, read off `dvc repro`'s own lines: a stage lasts from
    its first line to the next stage's first line, or to stop()."""

    def __init__(self, stages: list[str]) -> None:
        self.stages = stages
        self.outcomes: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def see(self, line: str) -> None:
        """Note a stage's first line (its outcome), which ends the stage before it."""
        lower = line.lower()
        outcome = next((o for key, o in OUTCOMES.items() if key in lower), None)
        stage = next((s for s in self.stages if f"stage '{s}'" in lower), None)
        if outcome and stage and stage not in self.outcomes:
            self.stop()
            self.outcomes[stage] = outcome
            self._current = (stage, time.perf_counter())

    def stop(self) -> None:
        """End the stage under way (the run is over)."""
        if self._current:
            stage, start = self._current
            self.seconds[stage] = round(time.perf_counter() - start, 1)
            self._current = None


def stage_table(outcomes: dict[str, str], seconds: dict[str, float]) -> Table:
    """A row per stage reached, in order, with its outcome and wall time, then the total."""
    table = Table("stage", "outcome", "wall time", title="Stages")
    for stage, outcome in outcomes.items():
        wall = seconds.get(stage)
        table.add_row(stage, outcome, "-" if wall is None else f"{wall:.1f} s")
    table.add_row("total", "", f"{sum(seconds.values()):.1f} s", style="bold")
    return table


def verdict_text(metrics: dict) -> str:
    """evaluate.json's verdict in words, with the accuracy gain over scratch."""
    v, gain = metrics["verdict"], metrics["gain_over_scratch"]["accuracy"]
    return (f"pretrained {'beats' if v['beats_scratch'] else 'does not beat'} scratch ({gain:+.4f} accuracy) and "
            f"{'beats' if v['beats_best_baseline'] else 'does not beat'} the best baseline ({v['best_baseline']})")


def metrics_table(metrics: dict) -> Table:
    """Pretrained, scratch and the best trivial baseline on the test set, the verdict below."""
    best = metrics["verdict"]["best_baseline"]
    table = Table("model", "accuracy", "macro-F1", title=f"Test set ({metrics['test_images']} images)",
                  caption=verdict_text(metrics))
    for name, label in (("pretrained", "pretrained"), ("scratch", "scratch"), (best, f"best baseline: {best}")):
        table.add_row(label, f"{metrics[name]['accuracy']:.4f}", f"{metrics[name]['macro_f1']:.4f}")
    return table


def show(console: Console, repo: Path, outcomes: dict[str, str], seconds: dict[str, float], decision: str) -> None:
    """The closing summary: stages, headline metrics (when evaluate has written them), decision."""
    console.print(stage_table(outcomes, seconds))
    file = repo / EVALUATE_METRICS_FILE
    if file.is_file():
        console.print(metrics_table(json.loads(file.read_text())))
    else:
        console.print(f"no {EVALUATE_METRICS_FILE}: no headline metrics")
    console.print(f"registry: {decision}", markup=False, highlight=False, soft_wrap=True)
