"""CPU everywhere, CUDA when present (bf16 autocast there): the one place that decides.

Under torchrun (resources.devices > 1, prefine/training/launch.py) each process is one rank
and takes the GPU of its local rank among those the Prefect slot handed the stage.
"""

from __future__ import annotations

import contextlib
import os

import torch


def pick() -> torch.device:
    """This process's device: the GPU of its local rank (the first visible one outside torchrun),
    else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on the CPU, where results must be reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
