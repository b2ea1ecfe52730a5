"""torchrun / DDP plumbing: read the launcher's environment, pick gloo (CPU) or NCCL (GPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from etp_search.errors import ModelError
from etp_search.models.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    # Global rank (0 = the only one that writes files).
    rank: int = 0
    # Number of processes.
    world_size: int = 1
    # Rank on this machine (picks the GPU).
    local_rank: int = 0
    # Device this process trains on.
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: float | None = None) -> DistEnv:
    """Join the process group torchrun set up (RANK/WORLD_SIZE/LOCAL_RANK), or run alone.

    Args:
        device: "auto"/None (CUDA when available), "cpu", "cuda" or "cuda:N" (N is honoured by a
            single process; under torchrun each process takes the GPU of its LOCAL_RANK).
        timeout_s: how long a collective may wait for the slowest rank (torch's default when None).

    Raises:
        ModelError: an unknown device string or a GPU this machine does not have.
    """
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device and world == 1 else local
        if index >= torch.cuda.device_count():
            raise ModelError(
                f"process {rank} needs GPU cuda:{index} but this machine has {torch.cuda.device_count()}; "
                "start torchrun with --nproc-per-node at most the number of GPUs"
            )
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if timeout_s is None:
            dist.init_process_group(backend=backend)
        else:
            from datetime import timedelta

            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        log.info("rank %d/%d joined the %s process group", rank, world, backend)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, device: str = "cpu") -> float:
    """Mean of a Python float over ranks (for logging only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
