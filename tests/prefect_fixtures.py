"""Fixtures for the orchestration tests: one real Prefect server per session (Prefect's test
harness, PREFECT_HOME in a temp folder), and the projects they run on (tests/projects.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from projects import dvc, git, make_project  # noqa: F401  (re-exported for the flow tests)

# Smaller than the quick profile: these tests check orchestration, not model quality.
TEST_PARAMS = ["profiles.quick.ingest.limit=600", "profiles.quick.finetune.steps=10"]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect API (SQLite in a temp folder); subprocesses reach it through the env."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {key: os.environ.get(key) for key in ("PREFECT_HOME", "PREFECT_API_URL")}
    with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=90):
        os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=PREFECT_API_URL.value())
        yield PREFECT_API_URL.value()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
