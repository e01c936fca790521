"""CPU everywhere, CUDA when present (bf16 autocast there): the one place that decides."""

from __future__ import annotations

import contextlib

import torch


def pick() -> torch.device:
    """The first visible CUDA device (the one a Prefect gpu slot hands us), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU, where results must be reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
