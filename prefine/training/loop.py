"""A resumable training loop shared by pretraining and fine-tuning.

After every epoch the whole state (model, optimizer, schedule, epoch, history, RNG) is saved
atomically. Each epoch draws its randomness from generators seeded by (seed, epoch), so a run
resumed after a crash ends with exactly the weights of an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from prefine.atomic import atomic_path
from prefine.errors import PrefineError
from prefine.training.device import autocast

# (batch tensors on the device, generator on the device) -> scalar loss, or (loss, {name: scalar})
# whose values are averaged per epoch into the record beside the loss (e.g. a GAN's two losses)
StepOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
StepFn = Callable[[Sequence[torch.Tensor], torch.Generator], StepOutput]
EpochFn = Callable[[dict[str, float]], None]


class TrainingDiverged(PrefineError):
    """The loss became NaN or infinite: stop, rather than export a broken model."""


@dataclass
class Run:
    """What a training run needs besides the model: the data and the schedule."""

    tensors: Sequence[torch.Tensor]  # same length; batched together, kept on the CPU
    epochs: int
    batch_size: int
    seed: int
    fingerprint: str  # what the state belongs to: a different one starts from scratch
    state_file: Path | None = None
    drop_last: bool = True
    desc: str = "train"
    meta: dict = field(default_factory=dict)  # JSON-able facts saved with the state (e.g. the spec)
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(CPU generator for the batch order, device generator for augmentation) of one epoch."""
    base = seed * 1_000_003 + epoch
    order = torch.Generator().manual_seed(base)
    aug = torch.Generator(device=device).manual_seed(base + 7919)
    return order, aug


def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _batches(n: int, batch_size: int, drop_last: bool) -> int:
    full = n // batch_size
    return full if drop_last and full > 0 else math.ceil(n / batch_size)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: StepFn,
    run: Run,
    device: torch.device,
    on_epoch: EpochFn | None = None,
) -> list[dict[str, float]]:
    """Train `model` for run.epochs, resuming from run.state_file; return the per-epoch history."""
    n = len(run.tensors[0])
    per_epoch = _batches(n, run.batch_size, run.drop_last)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(per_epoch * run.epochs))
    start = _resume(model, optimizer, schedule, run)
    on_epoch = on_epoch or (lambda record: None)
    for record in run.history:  # replay what a crashed run already logged
        on_epoch(record)
    for epoch in range(start, run.epochs):
        model.train()
        order, aug = epoch_generators(run.seed, epoch, device)
        perm = torch.randperm(n, generator=order)
        total, seen, parts = 0.0, 0, {}
        with _progress() as progress:
            bar = progress.add_task(f"{run.desc} epoch {epoch + 1}/{run.epochs}", total=per_epoch, loss=float("nan"))
            for b in range(per_epoch):
                idx = perm[b * run.batch_size : (b + 1) * run.batch_size]
                batch = [t[idx].to(device, non_blocking=True) for t in run.tensors]
                with autocast(device):
                    out = step(batch, aug)
                loss, extras = out if isinstance(out, tuple) else (out, {})
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(f"{run.desc}: loss is {value} at epoch {epoch + 1}, step {b + 1} of "
                                           f"{per_epoch}; nothing was saved from this epoch (lower the LR, or check the data)")
                total += value * len(idx)
                for key, value in extras.items():  # summed on the device: no extra sync per step
                    parts[key] = parts.get(key, 0.0) + value.detach().float() * len(idx)
                seen += len(idx)
                progress.update(bar, advance=1, loss=total / seen)
        record = {"epoch": epoch + 1, "loss": total / seen, **{k: v.item() / seen for k, v in parts.items()}}
        run.history.append(record)
        _save(model, optimizer, schedule, run, epoch + 1)
        on_epoch(record)
        if (epoch + 1) % max(1, run.epochs // 10) == 0 or epoch + 1 == run.epochs:
            print(f"{run.desc} epoch {epoch + 1}/{run.epochs}: loss {record['loss']:.4f}", flush=True)
    return run.history


def _progress() -> Progress:
    """Steps of one epoch with running loss, elapsed time and ETA, on a terminal only (DVC's and
    Prefect's logs get the one line per epoch instead)."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def _save(model: nn.Module, optimizer: torch.optim.Optimizer, schedule, run: Run, epoch: int) -> None:
    if run.state_file is None:
        return
    state = {
        "fingerprint": run.fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "history": run.history,
        "meta": run.meta,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(run.state_file) as tmp:
        torch.save(state, tmp)


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer, schedule, run: Run) -> int:
    """Load the saved state if it belongs to this run; return the first epoch still to train."""
    if run.state_file is None or not run.state_file.is_file():
        return 0
    try:
        state = torch.load(run.state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a foreign pickle: all mean "unusable"
        print(f"{run.desc}: warning: {run.state_file} is unreadable ({exc.__class__.__name__}); starting afresh",
              flush=True)
        return 0
    if not isinstance(state, dict) or state.get("fingerprint") != run.fingerprint:
        print(f"{run.desc}: {run.state_file} is from other data or params; starting afresh", flush=True)
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    run.history = list(state["history"])
    print(f"{run.desc}: resuming after epoch {state['epoch']} from {run.state_file}", flush=True)
    return int(state["epoch"])
