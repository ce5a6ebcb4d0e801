"""torchrun / DDP support: who am I, one process group, reductions. No-ops in one process.

`torchrun --nproc_per_node=N -m runner ...` sets RANK/WORLD_SIZE/LOCAL_RANK; the CLI
initialises the group before Hydra runs so every rank agrees on one run directory.
Only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    return Dist(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_process_group() -> Dist:
    """Initialise torch.distributed once (NCCL with CUDA, gloo otherwise)."""
    d = from_env()
    if not d.enabled:
        return d
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(d.local_rank)
        dist.init_process_group(backend=backend)
    return d


def broadcast_str(value: str) -> str:
    """Rank 0's value on every rank (e.g. the run directory)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t):
    """Sum a tensor over ranks in place (no-op in one process); returns it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
