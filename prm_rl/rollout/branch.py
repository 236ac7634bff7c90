"""Rollouts that branch: where to fork a sampled response, and the leaves its forks grow into.

K independent samples of a prompt share only the prompt: they branch at their first token and then run alone,
so a group's prefix tree has nothing to compare below the root. Forking mid-response adds that information
(TreeRL, arXiv 2506.11902: fork at the highest-entropy tokens within the same token budget). Per prompt, M root
samples; each root is forked at its ``points`` highest-entropy positions, where ``ways - 1`` new continuations
are sampled from the root's prefix; the root and its continuations are the prompt's K leaves, each a whole
response, so every later stage (verify, filter, advantages, the PRM) reads them as a group of K.

Layout of a group (K = M * (1 + points * (ways - 1)) rows): root 0, root 0's continuations (fork point by fork
point, ``ways - 1`` each), root 1, ... Pure tensor functions; the stage that samples is
:func:`prm_rl.trainer.stages.branched_generate_stage`.
"""
from __future__ import annotations

import torch

from prm_rl.rollout.generate import Rollout, response_mask_from_ids

__all__ = ["FORK_RULES", "FORK_PRIORITIES", "fork_positions", "uniform_priority", "grow_leaves", "leaves_per_root"]

FORK_RULES = ("step", "token")  # rollout.branch.at
FORK_PRIORITIES = ("entropy", "uniform")  # rollout.branch.by


def leaves_per_root(points: int, ways: int) -> int:
    """Responses a root ends up as: itself and ``ways - 1`` continuations at each of its ``points`` forks."""
    return 1 + points * (ways - 1)


def uniform_priority(response_ids: torch.Tensor) -> torch.Tensor:
    """``[R, T]`` uniform draws in [0, 1), a priority for :func:`fork_positions` that picks among a root's
    candidates at random (``rollout.branch.by=uniform``, the control for entropy). Seeded by the roots' tokens: the
    same on every rank (they all hold every root) and again after a resume, without touching any random state."""
    ids = response_ids.long()
    seed = int((ids * torch.arange(1, ids.numel() + 1).view(ids.shape)).sum()) % (2**63 - 1)
    return torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed))


def fork_positions(entropy: torch.Tensor, mask: torch.Tensor, closes_step: torch.Tensor, points: int,
                   at: str) -> torch.Tensor:
    """Where each root forks: the ``points`` response positions of highest entropy among its candidates
    (or of any other priority: :func:`uniform_priority`).

    Shapes: ``entropy`` [R, T] (of the policy's distribution for response token t), ``mask`` [R, T] (1 on
    response tokens), ``closes_step`` [R, T] bool (token t ends a step) -> [R, points] long, ascending per row.
    A fork at t keeps tokens 0..t-1 and samples anew from t. Candidates: ``step``, the first token of every step
    after the first (t - 1 closes a step); ``token``, every token after the first. A root with fewer candidates
    than ``points`` forks at its other positions too (highest entropy first), then at 0 (an independent sample).
    Ties go to the earlier position.
    """
    if at not in FORK_RULES:
        raise ValueError(f"at must be one of {FORK_RULES}, got {at!r}")
    r, t = mask.shape
    valid = mask.bool()
    after_first = valid.clone()
    after_first[:, 0] = False
    if at == "step":
        starts_step = torch.zeros_like(valid)
        starts_step[:, 1:] = closes_step[:, :-1] & valid[:, :-1]
        candidate = starts_step & valid
    else:
        candidate = after_first
    # rank: candidates by entropy, then other positions after the first, then position 0, then padding; within a
    # tier higher entropy first, then the earlier position (a stable sort on the entropy keeps position order)
    tier = torch.full((r, t), 3, dtype=torch.long, device=mask.device)
    tier[:, 0] = 2
    tier = torch.where(after_first, torch.ones_like(tier), tier)
    tier = torch.where(candidate, torch.zeros_like(tier), tier)
    by_entropy = torch.sort(-entropy.float().masked_fill(~valid, 0.0), dim=1, stable=True).indices
    by_tier = torch.sort(tier.gather(1, by_entropy), dim=1, stable=True).indices
    chosen = by_entropy.gather(1, by_tier)[:, :points]
    return torch.sort(chosen, dim=1).values


def grow_leaves(roots: Rollout, positions: torch.Tensor, continuations: Rollout, ways: int, max_new_tokens: int,
                eos_id: int, pad_id: int) -> tuple[Rollout, torch.Tensor]:
    """Each root followed by its continuations, spliced onto its prefix: the groups of leaves.

    ``roots``: R rows (M per prompt, prompts contiguous); ``positions`` [R, points] from :func:`fork_positions`;
    ``continuations``: R * points * (ways - 1) rows, root by root, fork point by fork point, each sampled after
    its root's prefix (its prompt rows are not read). A leaf is the root's tokens 0..t-1 then the continuation,
    cut at ``max_new_tokens``; its mask runs to its first EOS, and a leaf without one is truncated.
    Returns (leaves: R * (1 + points * (ways - 1)) rows, sampled [R * ...]: tokens of each leaf drawn by the
    sampler for it, the whole root for a root and the continuation alone for a fork: the token budget).
    """
    n_roots, points = positions.shape
    per_root = leaves_per_root(points, ways)
    # every leaf is its root's tokens 0..t-1 followed by ``tail`` tokens of a sampled row (a root: t = 0, itself)
    leaves = []  # (root, t, source rollout, source row, tail)
    for r in range(n_roots):
        leaves.append((r, 0, roots, r, int(roots.response_mask[r].sum())))
        for j in range(points):
            t = int(positions[r, j])
            for w in range(ways - 1):
                c = (r * points + j) * (ways - 1) + w
                leaves.append((r, t, continuations, c, min(int(continuations.response_mask[c].sum()),
                                                            max_new_tokens - t)))
    ids = torch.full((len(leaves), max_new_tokens), pad_id, dtype=torch.long)
    logp = None if roots.sampler_logp is None else torch.zeros((len(leaves), max_new_tokens), dtype=torch.float32)
    for i, (r, t, source, row, tail) in enumerate(leaves):
        ids[i, :t], ids[i, t:t + tail] = roots.response_ids[r, :t], source.response_ids[row, :tail]
        if logp is not None:
            logp[i, :t], logp[i, t:t + tail] = roots.sampler_logp[r, :t], source.sampler_logp[row, :tail]
    sampled = [tail for *_, tail in leaves]
    mask, truncated = response_mask_from_ids(ids, eos_id)
    width = max(1, int(mask.sum(dim=1).max()))
    ids, mask = ids.masked_fill(mask == 0, pad_id)[:, :width], mask[:, :width]
    root_of = torch.arange(n_roots).repeat_interleave(per_root)
    grown = Rollout(roots.prompt_ids[root_of], roots.prompt_mask[root_of], ids, mask, truncated,
                    None if logp is None else logp[:, :width] * mask)
    return grown, torch.tensor(sampled, dtype=torch.long)
