"""Every device of the box: a training stage started once re-launches itself under torchrun,
one process per device (standalone on one host; a c10d rendezvous across `resources.nodes`
hosts), elastic: when a rank dies, torchrun restarts the group up to `max_restarts` times and
every rank resumes from the last state rank 0 saved."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import torch

from prefine import distributed
from prefine.errors import PrefineError
from prefine.params import Params, ResourcesParams


def torchrun_argv(module: str, resources: ResourcesParams, devices: int) -> list[str]:
    """The command that runs `python -m module` on `devices` processes of this host."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={devices}",
            f"--max-restarts={resources.max_restarts}"]
    if resources.nodes == 1:
        argv.append("--standalone")
    else:  # every node runs the same stage; PREFINE_RUN_ID names the run they all join
        argv += [f"--nnodes={resources.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={resources.rendezvous}",
                 f"--rdzv-id={os.environ.get('PREFINE_RUN_ID', 'prefine')}"]
    return [*argv, "-m", module]


def relaunch(module: str, resources: ResourcesParams) -> int | None:
    """Run `module` under torchrun when it should use more than one device and is not already
    a torchrun worker; its exit code, or None when this process should train by itself."""
    gpus = torch.cuda.device_count()
    devices = resources.count(gpus)
    if distributed.launched() or (devices == 1 and resources.nodes == 1):
        return None
    if gpus and devices > gpus:
        raise PrefineError(f"resources.devices is {devices} but this process sees {gpus} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    env = dict(os.environ)
    # CPU ranks (gloo) share the cores; torchrun's own default is one thread per rank
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    print(f"{module.rsplit('.', 1)[-1]}: {devices} processes per host x {resources.nodes} host(s) (torchrun)",
          flush=True)
    return subprocess.run(torchrun_argv(module, resources, devices), env=env).returncode


def data_parallel(module: str, body: Callable[[Params], None]) -> Callable[[Params], None]:
    """A training stage's body that, with more than one device, runs `python -m module` under
    torchrun instead; inside torchrun, each rank joins the process group, runs it, and leaves."""

    def run(params: Params) -> None:
        code = relaunch(module, params.resources)
        if code:
            raise PrefineError(f"torchrun exited {code}: a rank failed more than resources.max_restarts "
                               f"({params.resources.max_restarts}) times (its error is above)")
        if code == 0:
            return
        distributed.join(torch.cuda.is_available())
        try:
            body(params)
        finally:
            distributed.leave()

    return run
