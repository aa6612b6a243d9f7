"""Data-parallel runs with torch.distributed: ``torchrun --nproc-per-node N -m bayescompress compress ...``.

Every rank holds the whole network; PyTorch's ``DistributedDataParallel`` averages the gradients, so every
parameter update, closed-form prior update, message-passing step and early-stopping decision is the same on
every rank. What is computed from local data only (SSVI's growth scores) is all-reduced here. Only rank 0
writes files and prints. Without torchrun's environment every function is the single-process identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one that writes files and prints (every process of a single-process run)."""
    return rank() == 0


def init_from_environment(device: str) -> str:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA) and return the device this rank
    trains on (``cuda:LOCAL_RANK`` for a CUDA run). Without torchrun, nothing happens."""
    if not launched() or active():
        return device
    cuda = torch.device(device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where the process group's collectives take their tensors: NCCL only CUDA ones (this rank's device), gloo
    CPU ones (a CUDA run's CPU tensors, such as the RNG states, go through NCCL on the GPU and come back)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _in_place(tensor: Tensor, collective) -> Tensor:
    """``collective(t)`` on ``tensor`` where the backend takes it, the result written back into ``tensor``."""
    moved = tensor.to(_collective_device())
    collective(moved)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def average_(tensor: Tensor) -> Tensor:
    """``tensor`` replaced by its mean over the ranks (in place)."""
    if active():
        _in_place(tensor, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM))
        tensor.div_(world_size())
    return tensor


def broadcast_(tensor: Tensor) -> Tensor:
    """``tensor`` replaced by rank 0's (in place): one decision for every rank."""
    if active():
        _in_place(tensor, lambda t: dist.broadcast(t, src=0))
    return tensor


def gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (same shape on all), stacked in rank order: shape (world_size, ...), on
    ``tensor``'s device."""
    if not active():
        return tensor.unsqueeze(0)
    moved = tensor.contiguous().to(_collective_device())
    parts = [torch.empty_like(moved) for _ in range(world_size())]
    dist.all_gather(parts, moved)
    return torch.stack(parts).to(tensor.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@torch.no_grad()
def max_rank_difference(tensors: dict[str, Tensor]) -> float:
    """The largest difference between ranks of any entry of ``tensors`` (0.0 when every rank holds the same;
    always 0.0 in a single process)."""
    if not active() or not tensors:
        return 0.0
    flat = torch.cat([t.detach().float().flatten().to(_collective_device()) for t in tensors.values()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    difference = (high - low).nan_to_num(nan=0.0)
    return float(difference.max()) if difference.numel() else 0.0


__all__ = ["active", "any_rank", "average_", "broadcast_", "gather", "init_from_environment", "is_main", "launched",
           "max_rank_difference", "rank", "shutdown", "world_size"]
