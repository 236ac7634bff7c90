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


def micro_batches(rows: torch.Tensor, micro_batch_size: int, group_size: int = 1, *,
                  lengths: torch.Tensor | None = None, max_tokens: int = 0, rank: int | None = None,
                  world: int | None = None) -> list[MicroBatch]:
    """This rank's share of ``rows`` cut into the number of micro-batches every rank will run.

    ``group_size > 1`` keeps groups of that many consecutive entries of ``rows`` together (pairwise
    losses need a whole group on one rank). Ownership is round-robin by group. ``max_tokens > 0`` (with
    ``lengths`` [N], each row's prompt + response tokens) also caps a micro-batch's padded size, rows x its
    longest row, as veRL's dynamic batching does: long rows go in small micro-batches, short ones in large. A
    group longer than the cap runs alone. Every rank knows every row's length, so each works out every rank's
    count and all run the largest. ``rank``/``world`` default to this process's place in the process group.
    """
    rank = dist.rank() if rank is None else rank
    world = dist.world_size() if world is None else world
    groups = rows.view(-1, group_size)
    if max_tokens > 0 and lengths is not None:
        packs = [_pack(groups[r::world], lengths, micro_batch_size, max_tokens) for r in range(world)]
        count = max(1, max(len(p) for p in packs))
        mine_packs = packs[rank]
        return [MicroBatch(mine_packs[i] if i < len(mine_packs) else rows[:group_size],
                           1.0 if i < len(mine_packs) else 0.0, i == count - 1) for i in range(count)]
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


def _pack(groups: torch.Tensor, lengths: torch.Tensor, max_rows: int, max_tokens: int) -> list[torch.Tensor]:
    """Consecutive groups ([G, k] row indices) into micro-batches of at most ``max_rows`` rows and
    ``max_tokens`` padded tokens (rows x longest row), in order; a group over either limit runs alone."""
    packs: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    rows = longest = 0
    for group in groups:
        size, width = group.numel(), int(lengths[group].max())
        if current and (rows + size > max_rows or (rows + size) * max(longest, width) > max_tokens):
            packs.append(torch.cat(current))
            current, rows, longest = [], 0, 0
        current.append(group)
        rows, longest = rows + size, max(longest, width)
    if current:
        packs.append(torch.cat(current))
    return packs


def split_minibatches(order: torch.Tensor, n_minibatches: int) -> list[torch.Tensor]:
    """``order`` in ``n_minibatches`` nearly equal consecutive parts (fewer if there are fewer items)."""
    return [part for part in torch.tensor_split(order, min(n_minibatches, max(1, order.numel()))) if part.numel()]
