"""Loaded by every Python process started with tests/fault_site on PYTHONPATH (tests/faults.py):
a command the warm server serves is handed to it (tests/warm.py), and this file runs again in
the fork; anything else installs the instruments here."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))
import faults  # noqa: E402
import warm  # noqa: E402

warm.client()
faults.install_from_env()
