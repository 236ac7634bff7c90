"""All collective communication of prm_rl: the only module that calls ``torch.distributed``.

Everything runs unchanged in a single process (no process group): each helper then returns its input.
The trainer gathers the small per-step tensors (token ids, scores, log-probs) onto every rank, so the
math in ``prm_rl.core`` sees the global batch and its statistics are global by construction.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def _single_process_env() -> None:
    """Started with plain ``python``: describe a one-rank world so DeepSpeed need not probe MPI."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(key, value)


def init(timeout_minutes: int = 60) -> tuple[int, int]:
    """Join the launcher's process group (gloo on CPU, nccl on GPU); returns (rank, world_size)."""
    if not dist.is_initialized():
        import deepspeed

        if "WORLD_SIZE" not in os.environ:
            _single_process_env()

        if torch.cuda.is_available():  # before the process group, as torch asks for NCCL: its device is this one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # the GPU index on this node, not RANK
            backend = "nccl"
        else:
            backend = "gloo"
            _remove_stale_shm_segment()
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return rank(), world_size()


def _remove_stale_shm_segment() -> None:
    """Remove this rank's DeepSpeed shared-memory allreduce segment left by an earlier run, and this run's at exit.

    On CPU, DeepSpeed maps a 66 MiB /dev/shm segment per rank, named by user, master address, port and rank,
    and never removes it. A later run on the same port then maps the dead run's segment and can hang or
    abort ("terminate called without an active exception"). Each rank removes its own before the rendezvous
    in ``init_process_group``, so when the ranks map each other's segments after it, none is stale.
    """
    import atexit

    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{os.environ.get('RANK', '0')}")

    def remove() -> None:
        try:
            os.unlink(name)
        except OSError:
            pass

    remove()
    atexit.register(remove)  # mappings of still-running ranks stay valid; only the name goes


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


# Every collective below runs on this rank's device (NCCL takes only CUDA tensors; the trainer keeps rollouts and
# metrics in host memory) and returns its result on the device the input came from.

def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (returns a new tensor)."""
    return _all_reduce(x, dist.ReduceOp.SUM) if active() else x.clone()


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    return _all_reduce(x, dist.ReduceOp.MAX) if active() else x.clone()


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    y = x.to(device(), copy=True)
    dist.all_reduce(y, op=op)
    return y.to(x.device)


def gather_rows(x: torch.Tensor, pad_value: float | int = 0) -> torch.Tensor:
    """Concatenate every rank's ``[n, ...]`` tensor along dim 0 in rank order; all ranks get the result.

    Each rank must pass the same ``n``; dim 1 (e.g. response length) may differ and is right-padded
    with ``pad_value`` to the longest.
    """
    if not active():
        return x
    if x.dim() >= 2:
        width = int(all_reduce_max(torch.tensor([x.shape[1]], device=x.device)).item())
        if x.shape[1] < width:
            pad = x.new_full((x.shape[0], width - x.shape[1], *x.shape[2:]), pad_value)
            x = torch.cat([x, pad], dim=1)
    y = x.to(device()).contiguous()
    parts = [torch.empty_like(y) for _ in range(world_size())]
    dist.all_gather(parts, y)
    return torch.cat(parts, dim=0).to(x.device)


def combine_rows(x: torch.Tensor) -> torch.Tensor:
    """Merge per-rank partial results where each row was written by exactly one rank (others left 0)."""
    return all_reduce_sum(x)


def ranks_failing(ok: bool) -> list[int]:
    """The ranks whose ``ok`` is False, on every rank: a check each rank makes for itself (does it see a file?)
    that all must then act on together, lest the ranks that passed wait for the others in a collective."""
    flags = gather_rows(torch.tensor([ok]))
    return [r for r, passed in enumerate(flags.tolist()) if not passed]


def broadcast_object(obj):
    """Rank 0's python object on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
