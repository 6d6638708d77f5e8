"""The few torch.distributed calls SAE training needs; each is a no-op in a single process.

Under ``torchrun --nproc_per_node N`` training calls ``init_from_env()`` (gloo on CPU, NCCL on GPU) and every
process then holds the same SAE; these helpers keep the quantities that steer training (dead features,
the BatchTopK threshold, resampling) identical everywhere.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed. Under torchrun this joins the process group
    first, so sources and trainers built in any order agree on who reads what."""
    init_from_env()
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); True if distributed."""
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def all_reduce_sum(t: Tensor) -> Tensor:
    """The elementwise sum over processes (in place, also returned)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: Tensor) -> Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Every process's `t` (same shape everywhere) concatenated along dim 0, in rank order."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_ragged(t: Tensor) -> Tensor:
    """Like all_gather_cat, but the first dimension may differ between processes."""
    if not active():
        return t
    n = torch.tensor([t.shape[0]])
    sizes = all_gather_cat(n)
    padded = t.new_zeros((int(sizes.max()), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = all_gather_cat(padded).split(int(sizes.max()))
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """rank 0's `obj` in every process."""
    if not active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
