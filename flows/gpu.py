"""GPU slots per host. A Prefect global concurrency limit `gpu-<hostname>`, sized to that host's
GPUs, counts the stages training on it at once, whichever worker or checkout they run from; a
claim the kernel holds for the process picks which device a slot holder gets (CUDA_VISIBLE_DEVICES).

The slot is a lease: `concurrency()` renews it from a thread every 3/4 of LEASE_S while the stage
runs, so a long stage keeps it; a killed process stops renewing, and the server's repossessor
frees the slot once the lease runs out (LEASE_S, plus its loop, 15 s by default)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefine.params import ResourcesParams

LEASE_S = 60  # the shortest lease the server grants: a killed run's slot comes back soonest


def visible_gpus() -> list[str]:
    """Device ids a stage may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists.
    (nvidia-smi, not torch: importing torch would cost the flow process seconds per run.)"""
    if (given := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def host_limit() -> str:
    """This host's slot limit: one per host, since GPUs belong to a host, not to the fleet."""
    return f"gpu-{socket.gethostname()}"


def ensure_limit(name: str, size: int) -> int:
    """The size of the global concurrency limit `name`, created with `size` slots if missing; an
    existing limit is never resized (an operator may have sized it on purpose)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            except ObjectAlreadyExists:  # another run on this host created it first
                pass
            return client.read_global_concurrency_limit_by_name(name).limit


def ensure_host_limit() -> int:
    """This host's limit, sized to its visible GPUs (at least 1: a CPU host trains one at a time)."""
    return ensure_limit(host_limit(), max(1, len(visible_gpus())))


def _claim(device: str) -> socket.socket | None:
    """Bind the host-wide abstract socket named after `device` (None if another process holds
    it): the kernel lets one process bind a name and frees it when that process ends, however it
    ends, and no /tmp is involved (workers may each have their own)."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0prefine-gpu-{device}")
    except OSError:
        claim.close()
        return None
    return claim


@contextmanager
def claim_devices(count: int, poll: float = 0.5) -> Iterator[str]:
    """`count` free visible devices as CUDA_VISIBLE_DEVICES ('' on a CPU-only host), held until
    the block ends. A holder of `count` host slots finds them free at once; the wait only covers
    a limit an operator sized above the host's devices."""
    devices = visible_gpus()
    if not devices:
        yield ""
        return
    with ExitStack() as held:
        chosen: list[str] = []
        while len(chosen) < count:
            for device in (d for d in devices if d not in chosen):
                if (claim := _claim(device)) is not None:
                    held.callback(claim.close)
                    chosen.append(device)
                    break
            else:
                time.sleep(poll)
        yield ",".join(chosen)


@contextmanager
def gpu_slot(resources: ResourcesParams | None = None) -> Iterator[str]:
    """Hold as many of this host's GPU slots as the stage uses devices (resources.devices; auto:
    all of them), and that many free devices, for the block; yields their ids for
    CUDA_VISIBLE_DEVICES. A CPU-only host has one slot, whatever the processes (yields '')."""
    gpus = visible_gpus()
    count = (resources or ResourcesParams()).count(len(gpus))
    if gpus and count > len(gpus):
        raise ValueError(f"resources.devices is {count} but this host has {len(gpus)} GPU(s): {','.join(gpus)}")
    ensure_host_limit()
    with concurrency(host_limit(), occupy=count if gpus else 1, lease_duration=LEASE_S, strict=True,
                     raise_on_lease_renewal_failure=False):  # a server blip must not kill hours of training
        with claim_devices(count) as ids:
            yield ids
