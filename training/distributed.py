"""Where a training process runs: one process, or one rank of a ``torchrun`` group.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process joins a DistributedDataParallel group
(gloo on CPU, NCCL on GPU); validation predictions and stop decisions are gathered from every
rank so all ranks take the same decision, and only rank 0 writes files. torch and MONAI are
imported inside the functions: this module is imported by the command line, which must start
without them.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: ``rank`` of ``world`` processes, its torch ``device``,
    and whether a process group was joined (``distributed``)."""

    rank: int
    world: int
    distributed: bool
    device: Any

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.distributed:
            import torch.distributed as dist  # torch only once training runs

            dist.barrier()

    def rank0_first(self, make: Callable[[bool], T]) -> T:
        """``make(True)`` on rank 0 first (it fills a shared cache), then ``make(False)`` on the
        other ranks (they read it); the argument says whether this rank is the main one."""
        if self.main:
            out = make(True)
        self.barrier()
        if not self.main:
            out = make(False)
        return out


def start(threads: int) -> Runtime:
    """Set torch's CPU threads, join the torchrun group when launched by torchrun and pick the
    device (``cuda:<LOCAL_RANK>`` when a GPU is present, else the CPU)."""
    import torch  # torch only once training runs

    torch.set_num_threads(max(1, threads))
    distributed = _init_distributed()
    rank, world = dist_info()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    return Runtime(rank=rank, world=world, distributed=distributed, device=device)


def stop(rt: Runtime) -> None:
    """Leave the process group (after a last barrier) when one was joined."""
    if rt.distributed:
        import torch.distributed as dist  # torch only once training runs

        dist.barrier()
        dist.destroy_process_group()


def dist_info() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    import torch.distributed as dist  # torch only once training runs

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun; False when single."""
    import torch  # torch only once training runs
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` in a single process)."""
    import torch.distributed as dist  # torch only once training runs

    rank, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (so every rank leaves the epoch at the same step)."""
    return any(gather(bool(flag)))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's, torch's and MONAI's random number generators."""
    import torch  # torch and MONAI only once training runs
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)
