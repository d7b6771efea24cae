"""Distributed data parallel with PyTorch's own engine: process groups, DDP, and batch sharding.

``torchrun`` starts one process per device and tells each its place through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_distributed`
reads them and joins the process group (gloo on CPU, NCCL on CUDA); the training loop then wraps the
model in :class:`torch.nn.parallel.DistributedDataParallel`, which all-reduces (averages) gradients
during the backward pass. Every rank samples the same global batch from the same seeded generator and
trains on its own slice of it (:func:`shard`), so N processes follow the trajectory of one process
with the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Introduced in {doc}`/book/part4/12-ddp-fsdp`.
    """

    rank: int
    """This process's index, 0 .. world_size - 1 (rank 0 logs and writes checkpoints)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Index on this machine (selects the GPU)."""
    device: torch.device
    """The device this process trains on."""
    backend: str | None
    """``"gloo"``, ``"nccl"``, or None when not distributed."""

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` set up, or describe a single process when not launched by it.

    :param backend: ``"gloo"`` or ``"nccl"``; default NCCL with CUDA, else gloo.
    :returns: this process's :class:`DistInfo`.

    Introduced in {doc}`/book/part4/12-ddp-fsdp`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistInfo(0, 1, 0, device, None)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, device, backend)


def world() -> tuple[int, int]:
    """This process's rank and the world size: ``(0, 1)`` outside a process group.

    :returns: ``(rank, world_size)``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that one rank trains on: contiguous, equal-sized slices.

    :param batch_size: rows in the global batch; must be divisible by ``world_size``.
    :param rank: this process's rank.
    :param world_size: number of processes.
    :returns: the slice of rows for ``rank``.
    :raises ValueError: when the batch does not split evenly.

    Introduced in {doc}`/book/part4/11-data-parallelism`.
    """
    if batch_size % world_size:
        raise ValueError(
            f"batch_size: {batch_size} windows do not split evenly over {world_size} processes"
        )
    per_rank = batch_size // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op outside a process group).

    :param value: the local tensor.
    :returns: the sum over ranks (a new tensor; the input is unchanged).
    """
    out = value.detach().clone()
    if world()[1] > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any process: one verdict that every rank agrees on.

    A no-op outside a process group. Under NCCL the vote travels on this rank's GPU.

    :param flag: this process's answer.
    :returns: True when at least one rank passed True.

    Introduced in {doc}`/book/part4/12-ddp-fsdp`.
    """
    if world()[1] == 1:
        return flag
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    vote = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def barrier() -> None:
    """Wait until every process gets here (a no-op outside a process group)."""
    if world()[1] > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once at the end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
