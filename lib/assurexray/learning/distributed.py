"""Process-group helpers for torchrun: one training loop for 1 and N processes.

torchrun (``torch.distributed.run``) starts the processes and sets WORLD_SIZE / RANK / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; nothing here launches anything. With WORLD_SIZE 1 (plain ``python``) every helper
is the identity, so the training loop calls them unconditionally and has no separate single-process path.
Backends: NCCL for CUDA, gloo for CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = ["Context", "all_gather_objects", "all_reduce_sum", "broadcast_object", "context_from_env",
           "process_group"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process sits: ``world_size`` processes in all, this one is ``rank`` (0 writes)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context_from_env() -> Context:
    """Read torchrun's environment; outside torchrun a single process (world size 1, rank 0)."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers (torchrun sets them): {err}") from err
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size}); start the "
                         "processes with torchrun instead of setting these variables by hand.")
    return Context(world_size=world_size, rank=rank, local_rank=local_rank)


@contextlib.contextmanager
def process_group(ctx: Context, device: torch.device) -> Iterator[None]:
    """Join the process group for the block (NCCL on CUDA, gloo on CPU) and destroy it afterwards.

    A group created by the caller (already initialised) is left to the caller.
    """
    owned = ctx.distributed and not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        logger.info("joined process group: rank %d of %d (%s)", ctx.rank, ctx.world_size, dist.get_backend())
    if ctx.distributed and device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        yield
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], ctx: Context, device: torch.device) -> list[float]:
    """Sum each value over the ranks (float64, so a loss sum over many images keeps its digits)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    # NCCL reduces CUDA tensors only; gloo CPU tensors.
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_gather_objects(obj: Any, ctx: Context) -> list[Any]:
    """Every rank's ``obj`` in rank order (picklable objects; small payloads such as validation logits)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, ctx: Context, *, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank: how a decision taken once reaches all processes."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
