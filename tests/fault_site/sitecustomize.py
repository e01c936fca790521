"""Loaded by every Python process started with tests/fault_site on PYTHONPATH (tests/faults.py)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
import faults  # noqa: E402

faults.install_from_env()
