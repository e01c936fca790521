"""Loaded by every Python process the tests start (tests/conftest.py puts this folder on
PYTHONPATH): a `python [-u] -m tasks.<stage>|dvc|torch.distributed.run` is handed to the warm
server (tests/warm.py). Other processes pay only this check (the variable is warm.ENV)."""

import os
import sys

if os.environ.get("PREFINE_TEST_WARM") and "-m" in sys.orig_argv[1:3]:
    import importlib.util

    _spec = importlib.util.spec_from_file_location("_prefine_warm", os.path.join(os.path.dirname(__file__), "..", "warm.py"))
    _warm = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_warm)
    _warm.client()
