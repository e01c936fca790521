"""The model registry: GTO versions (git tags) of the classifier and the encoder it came from,
and a promotion gate that moves `prod` only when a version beats it by a margin.

GTO picks a stage's holder by tag timestamps (one-second resolution), which misorders quick
reassignments such as a rollback; here the current prod is the `#prod#N` tag with the highest N.
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
from prefine.params import RegistryParams

ENCODER_ARTIFACT, CLASSIFIER_ARTIFACT = "encoder", "classifier"  # names in dvc.yaml `artifacts:`
ARTIFACT_FILES = {ENCODER_ARTIFACT: paths.ENCODER_FILE.as_posix(), CLASSIFIER_ARTIFACT: paths.CLASSIFIER_FILE.as_posix()}
METRICS_FILE = paths.EVALUATE_METRICS_FILE.as_posix()
COMMITTED_PATHS = ("dvc.lock", "params.yaml", "metrics", "plots")
PROD = "prod"


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


def prod_history(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> list[Version]:
    """Each prod assignment's version, newest assignment first (the first one is prod now)."""
    refs = git(repo, "for-each-ref", f"refs/tags/{name}#{PROD}#*", "--format=%(refname:short) %(*objectname)")
    by_commit = {v.commit: v for v in versions(repo, name)}
    tags = [line.split() for line in refs.splitlines() if line.strip()]
    tags.sort(key=lambda pair: int(pair[0].rsplit("#", 1)[1]), reverse=True)
    return [by_commit[commit] for _, commit in tags if commit in by_commit]


def prod(repo: Path, name: str = CLASSIFIER_ARTIFACT) -> Version | None:
    history = prod_history(repo, name)
    return history[0] if history else None


def gate(candidate: dict, current: Version | None, settings: RegistryParams) -> tuple[bool, str]:
    """Promote when there's no prod yet, or when `metric` beats prod's by at least `margin`."""
    metric, margin = settings.metric, settings.margin
    new = score(candidate, metric)
    if new is None:
        return False, f"no '{metric}' in {METRICS_FILE}: nothing to compare"
    if current is None:
        return True, f"first version ({metric} {new:.4f}) becomes prod"
    old = current.score(metric)
    if old is None:
        return True, f"prod {current.version} has no '{metric}'; {metric} {new:.4f} replaces it"
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
    version = _register(repo, CLASSIFIER_ARTIFACT, f"from {ENCODER_ARTIFACT}@{encoder.version}; gate: {reason}")
    if version.version in known:
        held = previous is not None and previous.version == version.version
        return Decision(version, held, f"model unchanged: already {version.version}", False, previous, encoder.version)
    if promote:
        gto.assign(str(repo), CLASSIFIER_ARTIFACT, PROD, version=version.version, message=reason, force=True)
    return Decision(version, promote, reason, True, previous, encoder.version)


def rollback(repo: Path, to: str | None = None) -> Version:
    """Assign prod to `to`, or to the version that held prod before the current one."""
    repo = Path(repo)
    history = prod_history(repo)
    if not history:
        raise RegistryError("no version has been in prod yet")
    if to is None:
        target = next((v for v in history if v.version != history[0].version), None)
        if target is None:
            raise RegistryError(f"{history[0].version} is the only version that has been in prod")
    else:
        target = next((v for v in versions(repo) if v.version == to), None)
        if target is None:
            raise RegistryError(f"no version {to} of {CLASSIFIER_ARTIFACT}")
    gto.assign(str(repo), CLASSIFIER_ARTIFACT, PROD, version=target.version, message=f"rollback from {history[0].version}", force=True)
    return target
