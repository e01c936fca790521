"""A resumable training loop shared by pretraining and fine-tuning.

The whole state (model, optimizer, schedule, position, history, RNG) is saved atomically after
every epoch and, with `save_every`, every that many steps. The batch order is a function of
(seed, epoch) (data/loader.py) and augmentation draws from a generator seeded by (seed, epoch)
whose state is saved with the position, so a run resumed after a crash, at an epoch's end or in
its middle, ends with exactly the weights of an uninterrupted one (on the CPU).

With several processes (torchrun, prefine/distributed.py) the same loop is data-parallel: each
rank trains its share of every global batch (`batch_size` rounded down to a multiple of the
number of ranks), gradients are averaged by DistributedDataParallel, BatchNorm normalises over
the global batch, and only rank 0 logs and saves; every rank resumes from that state.
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from prefine import distributed
from prefine.atomic import atomic_path
from prefine.data.loader import ORDER_SALT, Batchable, EpochSampler, make_loader
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

    data: Batchable  # batched by row (store.ImageSet: in memory, or read from disk per batch)
    epochs: int
    batch_size: int
    seed: int
    fingerprint: str  # what the state belongs to: a different one starts from scratch
    state_file: Path | None = None
    drop_last: bool = True
    desc: str = "train"
    meta: dict = field(default_factory=dict)  # JSON-able facts saved with the state (e.g. the spec)
    history: list[dict[str, float]] = field(default_factory=list)
    workers: int = 0  # DataLoader processes reading batches (0: read in this process)
    save_every: int | None = None  # also save the state every this many steps (None: per epoch only)


@dataclass
class Tally:
    """The running sums behind an epoch's record, saved mid-epoch so a resumed record is exact."""

    total: float = 0.0
    seen: int = 0
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # summed on the device: no sync

    def add(self, loss: float, extras: dict[str, torch.Tensor], n: int) -> None:
        self.total += loss * n
        for key, value in extras.items():
            self.parts[key] = self.parts.get(key, 0.0) + value.detach().float() * n
        self.seen += n

    def state(self) -> dict:
        return {"total": self.total, "seen": self.seen, "parts": {k: v.cpu() for k, v in self.parts.items()}}


@dataclass
class Position:
    """Where training stands: `epoch` epochs done, and `batch` batches of the next one."""

    epoch: int = 0
    batch: int = 0
    tally: Tally = field(default_factory=Tally)
    aug: torch.Tensor | None = None  # the augmentation generator's state after `batch` batches


def augment_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The device generator an epoch's augmentation (and any sampling in a step) draws from."""
    return torch.Generator(device=device).manual_seed(seed * ORDER_SALT + epoch + 7919)


def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: StepFn,
    run: Run,
    device: torch.device,
    on_epoch: EpochFn | None = None,
) -> list[dict[str, float]]:
    """Train `model` for run.epochs, resuming from run.state_file; return the per-epoch history
    (on every rank; only rank 0 calls `on_epoch`)."""
    sampler = EpochSampler(len(run.data), _global_batch(run), run.seed, run.drop_last,
                           distributed.rank(), distributed.world())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(sampler.per_epoch * run.epochs))
    trainer = _Trainer(model, optimizer, schedule, step, run, device)
    at = trainer.resume(sampler.per_epoch)
    trainer.parallelise()
    main = distributed.is_main()
    on_epoch = on_epoch if on_epoch and main else (lambda record: None)
    for record in run.history:  # replay what a crashed run already logged
        on_epoch(record)
    loader = make_loader(run.data, sampler, run.workers, pin=device.type == "cuda")
    for epoch in range(at.epoch, run.epochs):
        record = trainer.epoch(loader, at if epoch == at.epoch else Position(epoch))
        run.history.append(record)
        trainer.save(Position(epoch + 1))
        on_epoch(record)
        if main and ((epoch + 1) % max(1, run.epochs // 10) == 0 or epoch + 1 == run.epochs):
            print(f"{run.desc} epoch {epoch + 1}/{run.epochs}: loss {record['loss']:.4f}", flush=True)
    return run.history


def _global_batch(run: Run) -> int:
    """run.batch_size, rounded down to a multiple of the ranks so each trains an equal share."""
    world = distributed.world()
    if world == 1:
        return run.batch_size
    if not run.drop_last:
        raise ValueError("data-parallel training needs drop_last (equal shares of every batch)")
    batch = run.batch_size - run.batch_size % world
    if batch == 0:
        raise PrefineError(f"{run.desc}: a batch of {run.batch_size} images cannot be shared by {world} devices "
                           "(raise the batch size or lower resources.devices)")
    return batch


@dataclass
class _Trainer:
    """One run's moving parts, so that an epoch, a save and a resume each read as one method."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    step: StepFn
    run: Run
    device: torch.device

    def parallelise(self) -> None:
        """With several ranks: BatchNorm over the global batch, and the step run through DDP
        (which averages the gradients while the backward pass runs)."""
        if distributed.world() == 1:
            return
        distributed.globalise_batchnorm(self.model)
        self.step = DistributedDataParallel(_StepModule(self.model, self.step), forward_sync_buffers=False,
                                            device_ids=[self.device] if self.device.type == "cuda" else None)

    def epoch(self, loader: DataLoader, at: Position) -> dict[str, float]:
        """Train the batches of epoch at.epoch from at.batch on; return the epoch's record."""
        run, sampler = self.run, loader.sampler
        per_epoch = sampler.per_epoch
        sampler.set_epoch(at.epoch, at.batch)
        aug = augment_generator(run.seed, at.epoch, self.device)
        if at.aug is not None:
            aug.set_state(at.aug)
        tally = at.tally
        self.model.train()
        with _progress() as progress:
            bar = progress.add_task(f"{run.desc} epoch {at.epoch + 1}/{run.epochs}", total=per_epoch,
                                    completed=at.batch, loss=float("nan"))
            for b, batch in enumerate(loader, start=at.batch):
                loss, extras = self.train_step([t.to(self.device, non_blocking=True) for t in batch], aug)
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"{run.desc}: loss is {loss} at epoch {at.epoch + 1}, step {b + 1} of "
                                           f"{per_epoch}; nothing was saved after the last good state "
                                           "(lower the LR, or check the data)")
                tally.add(loss, extras, len(batch[0]) * distributed.world())
                progress.update(bar, advance=1, loss=tally.total / tally.seen)
                done = at.epoch * per_epoch + b + 1
                if run.save_every and done % run.save_every == 0 and b + 1 < per_epoch:
                    self.save(Position(at.epoch, b + 1, tally, aug.get_state()))
        images = (at.epoch + 1) * per_epoch * sampler.batch_size
        return {"epoch": at.epoch + 1, "step": (at.epoch + 1) * per_epoch, "images": images,
                "loss": tally.total / tally.seen, **{k: v.item() / tally.seen for k, v in tally.parts.items()}}

    def train_step(self, batch: list[torch.Tensor], aug: torch.Generator) -> tuple[float, dict[str, torch.Tensor]]:
        with autocast(self.device):
            out = self.step(batch, aug)
        loss, extras = out if isinstance(out, tuple) else (out, {})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if distributed.world() == 1:
            return loss.item(), extras
        # what the log reports: the ranks' mean (so every rank also stops together on a NaN)
        values = distributed.mean_over_ranks(torch.stack([loss.detach().float(), *(v.float() for v in extras.values())]))
        return values[0].item(), dict(zip(extras, values[1:]))

    def save(self, at: Position) -> None:
        if distributed.is_main():
            _save(self.model, self.optimizer, self.schedule, self.run, at)

    def resume(self, per_epoch: int) -> Position:
        """Load the saved state if it belongs to this run; return where training goes on from."""
        run = self.run
        state = _saved_state(run)
        if state is None:
            return Position()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        run.history = list(state["history"])
        epoch, batch = int(state["epoch"]), int(state.get("batch", 0))
        where = (f"at epoch {epoch + 1}, batch {batch} of {per_epoch} (step {epoch * per_epoch + batch})"
                 if batch else f"after epoch {epoch}")
        if distributed.is_main():
            print(f"{run.desc}: resuming {where} from {run.state_file}", flush=True)
        saved = state.get("tally") or {}
        tally = Tally(saved.get("total", 0.0), saved.get("seen", 0),
                      {k: v.to(self.device) for k, v in saved.get("parts", {}).items()})
        return Position(epoch, batch, tally, state.get("aug"))


class _StepModule(nn.Module):
    """The step as a module's forward, so DistributedDataParallel can wrap any objective's loss."""

    def __init__(self, model: nn.Module, step: StepFn) -> None:
        super().__init__()
        self.model, self.run_step = model, step

    def forward(self, batch: Sequence[torch.Tensor], generator: torch.Generator) -> StepOutput:
        return self.run_step(batch, generator)


def _save(model: nn.Module, optimizer: torch.optim.Optimizer, schedule, run: Run, at: Position) -> None:
    """Write the whole training state at `at` atomically (a module function: tests inject faults here)."""
    if run.state_file is None:
        return
    state = {
        "fingerprint": run.fingerprint,
        "epoch": at.epoch,
        "batch": at.batch,
        "tally": at.tally.state(),
        "aug": at.aug,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "history": run.history,
        "meta": run.meta,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(run.state_file) as tmp:
        torch.save(state, tmp)


def _saved_state(run: Run) -> dict | None:
    """The state in run.state_file if it is readable and belongs to this run, else None (said why)."""
    if run.state_file is None or not run.state_file.is_file():
        return None
    try:
        state = torch.load(run.state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a foreign pickle: all mean "unusable"
        print(f"{run.desc}: warning: {run.state_file} is unreadable ({exc.__class__.__name__}); starting afresh",
              flush=True)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != run.fingerprint:
        print(f"{run.desc}: {run.state_file} is from other data or params; starting afresh", flush=True)
        return None
    return state


def _progress() -> Progress:
    """Steps of one epoch with running loss, elapsed time and ETA, on a terminal only (DVC's and
    Prefect's logs get the one line per epoch instead)."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True,
                    disable=not console.is_terminal or not distributed.is_main())
