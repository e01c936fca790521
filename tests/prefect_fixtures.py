"""What the orchestration tests share besides the Prefect server (a session fixture in
conftest.py): the projects they run on (tests/projects.py) and their smaller params."""

from __future__ import annotations

from projects import dvc, git, make_project  # noqa: F401  (re-exported for the flow tests)

# Smaller than the quick profile: these tests check orchestration, not model quality.
TEST_PARAMS = ["ingest.limit=600", "finetune.steps=10"]
