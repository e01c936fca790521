"""What every stage entry point shares: validated params, and user errors as one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from prefine import params as params_mod
from prefine.errors import PrefineError
from prefine.params import Params


def run_stage(name: str, body: Callable[[Params], None]) -> None:
    """Load params.yaml, run the stage, and turn a PrefineError into `<name>: error: ...`, exit 1."""
    try:
        body(params_mod.load())
    except PrefineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
