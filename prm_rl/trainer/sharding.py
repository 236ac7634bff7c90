"""How rows of the global batch are split over ranks and micro-batches.

Every rank holds the whole (small) step batch; each forward/backward touches only the rows this rank owns.
All ranks run the same number of micro-batches, even when one has no rows left, because ZeRO gathers
parameters and reduces gradients collectively at every forward/backward. A rank with nothing to do runs
a stand-in row with weight 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prm_rl.engine import dist


@dataclass
class MicroBatch:
    rows: torch.Tensor  # global row indices to run (a stand-in row when ``weight`` is 0)
    weight: float  # 1.0, or 0.0 for a stand-in that only keeps the collectives in step
    is_last: bool  # closes the optimiser step / the pass


def micro_batches(rows: torch.Tensor, micro_batch_size: int, group_size: int = 1, *, rank: int | None = None,
                  world: int | None = None) -> list[MicroBatch]:
    """This rank's share of ``rows`` cut into the number of micro-batches every rank will run.

    ``group_size > 1`` keeps groups of that many consecutive entries of ``rows`` together (pairwise
    losses need a whole group on one rank). Ownership is round-robin by group. ``rank``/``world``
    default to this process's place in the process group.
    """
    rank = dist.rank() if rank is None else rank
    world = dist.world_size() if world is None else world
    groups = rows.view(-1, group_size)
    mine = groups[rank::world].reshape(-1)
    per_rank = math.ceil(groups.shape[0] / world) * group_size
    step = max(group_size, (micro_batch_size // group_size) * group_size)
    count = max(1, math.ceil(per_rank / step))
    out = []
    for i in range(count):
        part = mine[i * step:(i + 1) * step]
        real = part.numel() > 0
        out.append(MicroBatch(part if real else rows[:group_size], 1.0 if real else 0.0, i == count - 1))
    return out


def split_minibatches(order: torch.Tensor, n_minibatches: int) -> list[torch.Tensor]:
    """``order`` in ``n_minibatches`` nearly equal consecutive parts (fewer if there are fewer items)."""
    return [part for part in torch.tensor_split(order, min(n_minibatches, max(1, order.numel()))) if part.numel()]
