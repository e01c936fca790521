"""The model registry: GTO versions (git tags) of the classifier and the encoder it came from,
and a promotion gate that moves `prod` only when a version beats it by a margin on the same test
set and classes.

GTO picks a stage's holder by tag timestamps (one-second resolution), which misorders quick
reassignments such as a rollback; here the current prod is the `#prod#N` tag with the highest N.
Each `#prod#N` tag's message says why: `gate: <reason>` or `rollback from vX to vY[: reason]`.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from gto import api as gto
from gto.exceptions import ArtifactNotFound

from prefine import paths
from prefine.errors import PrefineError
from prefine.params import Params, RegistryParams

ENCODER_ARTIFACT, CLASSIFIER_ARTIFACT = "encoder", "classifier"  # names in dvc.yaml `artifacts:`
ARTIFACT_FILES = {ENCODER_ARTIFACT: paths.ENCODER_FILE.as_posix(), CLASSIFIER_ARTIFACT: paths.CLASSIFIER_FILE.as_posix()}
METRICS_FILE = paths.EVALUATE_METRICS_FILE.as_posix()
COMMITTED_PATHS = ("dvc.lock", "params.yaml", "inputs.json", "metrics", "plots")
PROD = "prod"
REJECTED = "gate: not promoted"  # in a version's registration message when the gate kept it out of prod


class RegistryError(PrefineError):
    """The registry can't do what was asked (no such version, no git repo, ...)."""


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    commit: str
    created_at: str
    message: str
    metrics: dict = field(default_factory=dict)  # metrics/evaluate.json at the version's commit

    def score(self, metric: str) -> float | None:
        return score(self.metrics, metric)


@dataclass(frozen=True)
class Assignment:
    """One `#prod#N` tag: the version it put in prod, and why (its tag message)."""

    version: Version
    message: str


@dataclass(frozen=True)
class Decision:
    """The outcome of registering: which version, whether it holds prod now, and why."""

    version: Version
    promoted: bool
    reason: str
    new: bool  # False when the model was unchanged and its existing version was reused
    previous_prod: Version | None
    encoder: str | None


def score(metrics: dict, metric: str) -> float | None:
    """The gate's number: `metric` of the pretrained classifier on the test split."""
    return (metrics.get("pretrained") or {}).get(metric)


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode:
        raise RegistryError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _show(repo: Path, commit: str, path: str) -> str | None:
    result = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=repo, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def metrics_at(repo: Path, commit: str) -> dict:
    text = _show(repo, commit, METRICS_FILE)
    return json.loads(text) if text else {}


def output_md5(repo: Path, commit: str, path: str) -> str | None:
    """md5 that dvc.lock at `commit` records for the output `path` (None if absent)."""
    lock = yaml.safe_load(_show(repo, commit, "dvc.lock") or "{}") or {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == path:
                return out.get("md5")
    return None


def commit_outputs(repo: Path, message: str) -> bool:
    """Commit what a version needs (dvc.lock, params, metrics, plots, DVC's .gitignores)."""
    ignores = git(repo, "ls-files", "-mo", "--exclude-standard", "--", ":(glob)**/.gitignore").split()
    present = [p for p in COMMITTED_PATHS if (repo / p).exists()] + ignores
    git(repo, "add", "-A", "--", *present)
    if not git(repo, "diff", "--cached", "--name-only", "--", *present).strip():
        return False
    git(repo, "commit", "-q", "-m", message, "--", *present)
    return True


def versions(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> list[Version]:
    """Registered versions of `name`, newest first, each with its metrics."""
    try:
        found = gto.show(str(repo), name, registered_only=True)
    except ArtifactNotFound:
        return []
    out = [
        Version(name, v["version"], v["commit_hexsha"], str(v["created_at"]), v.get("message") or "",
                metrics_at(repo, v["commit_hexsha"]))
        for v in found
    ]
    return sorted(out, key=lambda v: _semver(v.version), reverse=True)


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def assignments(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> list[Assignment]:
    """Every prod assignment, oldest first (the last one holds prod now), with its tag message."""
    refs = git(repo, "for-each-ref", f"refs/tags/{name}#{PROD}#*",
               "--format=%(refname:short)%00%(*objectname)%00%(contents)%00")
    fields = refs.split("\0")
    tags = [(fields[i].strip(), fields[i + 1], fields[i + 2].strip()) for i in range(0, len(fields) - 2, 3)]
    tags.sort(key=lambda tag: int(tag[0].rsplit("#", 1)[1]))
    by_commit = {v.commit: v for v in versions(repo, name)}
    return [Assignment(by_commit[commit], message) for _, commit, message in tags if commit in by_commit]


def prod_history(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> list[Version]:
    """The versions prod stepped through, newest first (the first one is prod now). A rollback to
    a version still in this history cuts what came after it, so rolling back again steps further
    back instead of returning to the version just rolled back from."""
    history: list[Version] = []
    for assignment in assignments(repo, name):
        held = [v.version for v in history]
        version = assignment.version
        history = history[: held.index(version.version) + 1] if version.version in held else [*history, version]
    return history[::-1]


def prod_assignment(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> Assignment | None:
    """The assignment that holds prod now: its version, and why it is prod."""
    found = assignments(repo, name)
    return found[-1] if found else None


def prod(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> Version | None:
    current = prod_assignment(repo, name)
    return current.version if current else None


def smoke_run(params: Params) -> str | None:
    """Why a run is a smoke run (None if it isn't): it trained on a slice of the data, so its
    scores say nothing about the model and it must not become prod by default."""
    if params.ingest.limit is None:
        return None
    return f"smoke run: ingest.limit is {params.ingest.limit} in params.yaml (a slice of the data)"


def _test_set(metrics: dict) -> str:
    found = metrics.get("test_set") or {}
    return f"{found.get('images')} test images (sha256 {str(found.get('sha256'))[:12]})"


def incomparable(candidate: dict, current: Version, metric: str) -> str | None:
    """Why the candidate's score can't be set against prod's (None when it can): on another test
    set or class list the two numbers measure different things."""
    if not current.metrics.get("test_set"):
        return f"prod {current.version}'s {METRICS_FILE} has no test_set (evaluated before test sets were recorded)"
    if not candidate.get("test_set"):
        return f"this run's {METRICS_FILE} has no test_set"
    if candidate["test_set"].get("sha256") != current.metrics["test_set"].get("sha256"):
        return f"test set differs: {_test_set(candidate)} vs prod {current.version}'s {_test_set(current.metrics)}"
    if candidate.get("classes") != current.metrics.get("classes"):
        return f"classes differ: {candidate.get('classes')} vs prod {current.version}'s {current.metrics.get('classes')}"
    if current.score(metric) is None:
        return f"prod {current.version} has no '{metric}'"
    return None


def gate(candidate: dict, current: Version | None, settings: RegistryParams) -> tuple[bool, str]:
    """Promote when there's no prod yet, or when `metric` beats prod's by at least `margin` on the
    same test set and classes; a score that can't be compared keeps prod and says why."""
    metric, margin = settings.metric, settings.margin
    new = score(candidate, metric)
    if new is None:
        return False, f"no '{metric}' in {METRICS_FILE}: nothing to compare"
    if current is None:
        return True, f"first version ({metric} {new:.4f}) becomes prod"
    mismatch = incomparable(candidate, current, metric)
    if mismatch:
        return False, (f"cannot compare with prod: {mismatch}; to promote anyway: "
                       "`prefine registry rollback --to <version> --force --reason ...`")
    old = current.score(metric)
    gain = round(new - old, 6)
    verdict = ">=" if gain >= margin else "<"
    return gain >= margin, f"{metric} {new:.4f} vs prod {current.version} {old:.4f}: {gain:+.4f} {verdict} margin {margin}"


def _register(repo: Path, name: str, message: str) -> Version:
    """A new version of `name` at HEAD, or the latest one if its file is unchanged."""
    head = git(repo, "rev-parse", "HEAD").strip()
    md5 = output_md5(repo, head, ARTIFACT_FILES[name])
    latest = next(iter(versions(repo, name)), None)
    if latest and output_md5(repo, latest.commit, ARTIFACT_FILES[name]) == md5:
        return latest
    try:
        gto.register(str(repo), name, "HEAD", message=message)
    except Exception as exc:  # GTO's errors share no useful base class
        raise RegistryError(f"registering {name}: {exc}") from exc
    return versions(repo, name)[0]


def register(repo: Path, settings: RegistryParams) -> Decision:
    """Commit the run (if configured), register classifier and encoder, then apply the gate."""
    repo = Path(repo)
    if settings.commit:
        commit_outputs(repo, "prefine: training run (dvc.lock, params, metrics)")
    encoder = _register(repo, ENCODER_ARTIFACT, "pretrained encoder")
    previous = prod(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    candidate = metrics_at(repo, head)
    known = {v.version for v in versions(repo)}
    promote, reason = gate(candidate, previous, settings)
    verdict = "gate: promoted" if promote else REJECTED
    version = _register(repo, CLASSIFIER_ARTIFACT, f"from {ENCODER_ARTIFACT}@{encoder.version}; {verdict}: {reason}")
    if version.version in known:
        held = previous is not None and previous.version == version.version
        return Decision(version, held, f"model unchanged: already {version.version}", False, previous, encoder.version)
    if promote:
        gto.assign(str(repo), CLASSIFIER_ARTIFACT, PROD, version=version.version, message=f"gate: {reason}", force=True)
    return Decision(version, promote, reason, True, previous, encoder.version)


def _rollback_target(repo: Path, history: list[Version], to: str | None) -> Version:
    """`to`, or the version prod held before the current one in its (rolled-back) history."""
    if to is None:
        if len(history) < 2:
            raise RegistryError(f"{history[0].version} is the only version left in prod's history: nothing to roll back to")
        return history[1]
    target = next((v for v in versions(repo) if v.version == to), None)
    if target is None:
        raise RegistryError(f"no version {to} of {CLASSIFIER_ARTIFACT}")
    if target.version == history[0].version:
        raise RegistryError(f"{to} is already prod")
    return target


def rollback(repo: Path, to: str | None = None, force: bool = False, reason: str | None = None) -> Version:
    """Assign prod to `to`, or one step back through prod's history. A version the gate kept out
    of prod goes in only with `force` and a `reason`: the tag message records the override and why."""
    repo = Path(repo)
    history = prod_history(repo)
    if not history:
        raise RegistryError("no version has been in prod yet")
    target = _rollback_target(repo, history, to)
    message = f"rollback from {history[0].version} to {target.version}"
    if REJECTED in target.message:
        if not (force and reason):
            raise RegistryError(f"{target.version} was not promoted ({target.message}): needs --force and --reason")
        message += " (forced past the gate)"
    if reason:
        message += f": {reason}"
    gto.assign(str(repo), CLASSIFIER_ARTIFACT, PROD, version=target.version, message=message, force=True)
    return target
