"""Step values from the group's own prefix tree: credit from outcome labels with no model and no extra rollout.

The K responses to one prompt share prefixes. Read as a tree (the prompt at the root, one node per distinct
prefix), each node has a Monte-Carlo value for free: V(node) = mean outcome of the group's responses that pass
through it; V(root) = the group mean. A segment's credit is the change of value it causes,
delta_k = V(prefix through segment k) - V(prefix before it): exactly 0 on a segment every sibling shares too,
non-zero only where the group branches, and along one response the deltas telescope to o_i - V(root)
(TEMPO / prefix-to-tree, arXiv 2509.18314; lambda-GRPO, arXiv 2509.21154; prime-reference.md section 7).

Segments are the response's steps (spans closed by a delimiter token, and the last token) or single tokens.
Layout as in :mod:`~prm_rl.core.advantages`: N = G * K rows, groups contiguous, [N, T] right-padded. Every
statistic is within one group, so a batch of whole groups gives the same values on any number of ranks.
"""
from __future__ import annotations

import torch

from .filters import _as_groups
from .masked import _last_token_mask, _valid

__all__ = ["TREE_SPLITS", "prefix_values", "segment_ends", "tree_credit"]

TREE_SPLITS = ("step", "token")  # algorithm.tree_split


def prefix_values(ids: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Value of every response prefix in its group's tree.

    Shapes: ``ids``, ``mask`` [N, T], ``scores`` [N] -> [N, T] float, 0 on invalid positions.
    Formula: V[i, t] = mean of o_j over the rows j of i's group whose valid tokens 0..t equal row i's
    (row i itself always counts). A row that ends at t shares the prefix of one that goes on.
    """
    valid = _valid(mask)
    n, t = ids.shape
    g_ids = _as_groups(ids, group_size)  # [G, K, T]
    g_valid = _as_groups(valid, group_size)
    o = _as_groups(scores.float(), group_size)  # [G, K]
    same = (g_ids[:, :, None, :] == g_ids[:, None, :, :]) & g_valid[:, :, None, :] & g_valid[:, None, :, :]
    shared = same.long().cumprod(dim=-1).float()  # [G, K(i), K(j), T]: j shares i's prefix through t
    total = torch.einsum("gijt,gj->git", shared, o)
    count = shared.sum(dim=2)
    values = (total / count.clamp(min=1)).reshape(n, t)
    return torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))


def segment_ends(mask: torch.Tensor, step_end: torch.Tensor | None, split: str) -> torch.Tensor:
    """[N, T] bool: the last token of each segment: every valid token (``token``), or each token that closes a
    step and the row's last token (``step``, as :func:`~prm_rl.core.implicit.process_rewards` reads steps)."""
    if split not in TREE_SPLITS:
        raise ValueError(f"split must be one of {TREE_SPLITS}, got {split!r}")
    valid = _valid(mask)
    if split == "token":
        return valid
    if step_end is None:
        raise ValueError('split "step" needs a step_end tensor marking the last token of each step')
    return (_valid(step_end) & valid) | _last_token_mask(valid)


def tree_credit(ids: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, group_size: int,
                ends: torch.Tensor) -> torch.Tensor:
    """Per-token credit of the segment each token belongs to: V(prefix through it) - V(prefix before it).

    Shapes: ``ids``, ``mask``, ``ends`` (from :func:`segment_ends`) [N, T], ``scores`` [N] -> [N, T], 0 on
    invalid positions. Every token of segment k carries delta_k = V(end_k) - V(end_{k-1}), V(end_0) being the
    group mean (the root). Summed over a row's segment ends, the deltas give o_i - mean of the group.
    """
    valid = _valid(mask)
    ends = _valid(ends) & valid
    values = prefix_values(ids, mask, scores, group_size)
    n, t = values.shape
    root = _as_groups(scores.float(), group_size).mean(dim=1).repeat_interleave(group_size)  # [N]
    pos = torch.arange(t, device=values.device).expand(n, t)
    # the end of the segment a token is in: the nearest end at or after it
    next_end = torch.where(ends, pos, torch.full_like(pos, t - 1)).flip(-1).cummin(-1).values.flip(-1)
    # the end of the segment before it: the last end strictly before it (-1: none, the root)
    last_end = torch.where(ends, pos, torch.full_like(pos, -1)).cummax(-1).values
    prev_end = torch.cat([torch.full_like(pos[:, :1], -1), last_end[:, :-1]], dim=1)
    after = values.gather(1, next_end)
    before = torch.where(prev_end >= 0, values.gather(1, prev_end.clamp(min=0)), root[:, None])
    credit = after - before
    return torch.where(valid, credit, torch.zeros((), dtype=credit.dtype, device=credit.device))
