"""What every stage entry point shares: validated params, user errors as one clear line, and a
quick exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from prefine import params as params_mod
from prefine.errors import PrefineError
from prefine.params import Params


def run_stage(name: str, body: Callable[[Params], None]) -> None:
    """Load params.yaml, run the stage, and turn a PrefineError into `<name>: error: ...`, exit 1.
    A stage that finished exits at once: every output is written and closed (atomic renames), and
    the interpreter's teardown of torch's modules would add about a second to each stage."""
    try:
        body(params_mod.load())
    except PrefineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
