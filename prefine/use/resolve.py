"""The weights file a `--model` names: a path, or a registry version (`classifier@v0.0.3`,
`classifier@prod`, `encoder@prod`) whose file is fetched through DVC when the checkout holds
another one.

A version is a commit; its file is the artifact's path in that commit's dvc.lock (md5). The
checkout's file is used when its md5 matches; otherwise `dvc get` fetches it from the DVC cache,
or from the registry's remote (params.yaml `registry:` at that commit: the remote lives in
.dvc/config.local, which a fresh clone lacks, so it is named by its url there).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from prefine import paths, registry
from prefine.errors import PrefineError
from prefine.params import RegistryParams


@contextlib.contextmanager
def model_file(model: str, artifact: str, repo: Path) -> Iterator[Path]:
    """The weights `model` names, for `artifact` (classifier or encoder); a fetched file lives
    as long as the context."""
    if "@" not in model or Path(model).exists():  # a path may hold an @ too
        yield Path(model)
        return
    name, version = model.split("@", 1)
    if name != artifact:
        raise PrefineError(f"--model {model}: expected a path, {artifact}@<version> or {artifact}@{registry.PROD}")
    repo = Path(repo).resolve()
    commit = _commit(repo, artifact, version)
    file = registry.ARTIFACT_FILES[artifact]
    md5 = registry.output_md5(repo, commit, file)
    if md5 is None:
        raise registry.RegistryError(f"{model}: dvc.lock at commit {commit[:8]} records no {file}")
    if (repo / file).is_file() and _md5(repo / file) == md5:
        yield repo / file
        return
    with tempfile.TemporaryDirectory(prefix="prefine-model-") as tmp:
        yield _fetch(repo, file, commit, Path(tmp))


def _commit(repo: Path, artifact: str, version: str) -> str:
    """The commit of a registered version. `prod` is the prod classifier's commit for the encoder
    too: the encoder in that commit's dvc.lock is the one the classifier was fine-tuned from."""
    if version == registry.PROD:
        current = registry.prod(repo)
        if current is None:
            raise registry.RegistryError(f"{repo}: no {registry.CLASSIFIER_ARTIFACT} version is in prod yet")
        return current.commit
    commits = {v.version: v.commit for v in registry.versions(repo, artifact)}
    if version not in commits:
        raise registry.RegistryError(f"no version {version} of {artifact} (registered: {', '.join(commits) or 'none'})")
    return commits[version]


def _md5(file: Path) -> str:
    """The hash dvc.lock records for a file output (DVC 3: md5 of the bytes)."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _fetch(repo: Path, file: str, commit: str, folder: Path) -> Path:
    """`dvc get` the file as it was at `commit` into `folder`."""
    out = folder / Path(file).name
    args = ["get", str(repo), file, "--rev", commit, "-o", str(out), *_remote_args(repo, commit, folder)]
    result = _dvc(repo, *args)
    if result.returncode:
        raise registry.RegistryError(f"dvc get {file} --rev {commit[:8]}: {_last_error(result)}")
    return out


def _remote_args(repo: Path, commit: str, folder: Path) -> list[str]:
    """The registry's remote as `dvc get` options: by name when this checkout configures it,
    else by its url (relative to the repo, as the register step adds it) in a config file."""
    raw = yaml.safe_load(registry.git(repo, "show", f"{commit}:{paths.PARAMS_FILE.as_posix()}")) or {}
    settings = RegistryParams(**(raw.get("registry") or {}))
    listed = _dvc(repo, "remote", "list").stdout.splitlines()
    if any(line.split()[:1] == [settings.remote] for line in listed):
        return ["--remote", settings.remote]
    config = folder / "remote.config"
    url = (repo / settings.remote_url).resolve()
    config.write_text(f"[core]\n    remote = {settings.remote}\n['remote \"{settings.remote}\"']\n    url = {url}\n")
    return ["--config", str(config)]


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """The dvc CLI of this interpreter's environment (it need not be on PATH)."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, check=False)


def _last_error(result: subprocess.CompletedProcess) -> str:
    """DVC's ERROR line (it ends with a support blurb), for a one-line failure."""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "failed")
