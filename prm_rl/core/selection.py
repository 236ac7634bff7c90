"""Picking one response out of N: pass@k, best-of-N by a score, (weighted) majority voting, and intervals.

Layout: P prompts with n sampled responses each, as [P, n] tensors (``correct`` in {0, 1}, ``scores`` any real,
``answer_ids`` the index of each response's final answer among its prompt's distinct answers, -1 for none).
Best-of-N and voting are measured on random N-subsets of the n responses (``draws`` subsets per prompt, from
``generator``), so one sample of n = 16 gives every N <= 16; ties are broken uniformly at random, in
expectation. Each function returns the per-prompt expected accuracy [P]; :func:`bootstrap_interval` turns
that into a mean and an interval over prompts.
"""
from __future__ import annotations

import math

import torch

__all__ = ["pass_at_k", "best_of_n", "vote", "bootstrap_interval", "at_step_ends", "last_step"]


def pass_at_k(correct: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased pass@k per prompt (Chen et al. 2021): 1 - C(n - c, k) / C(n, k), c correct of n.

    Shapes: ``correct`` [P, n] -> [P].
    """
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n={n}, got k={k}")
    c = correct.sum(dim=1).long().tolist()
    return torch.tensor([1.0 - math.comb(n - ci, k) / math.comb(n, k) for ci in c])


def _subsets(shape: tuple[int, int], size: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """[P, draws, size] indices: ``draws`` random ``size``-subsets of range(n) for each prompt."""
    p, n = shape
    if not 1 <= size <= n:
        raise ValueError(f"subset size must be in 1..{n}, got {size}")
    return torch.rand(p, draws, n, generator=generator).argsort(dim=2)[:, :, :size]


def best_of_n(scores: torch.Tensor, correct: torch.Tensor, size: int, draws: int,
              generator: torch.Generator) -> torch.Tensor:
    """Expected accuracy of keeping the highest-scored of ``size`` random responses. [P, n] -> [P]."""
    idx = _subsets(tuple(scores.shape), size, draws, generator)
    s = scores[:, None, :].expand(-1, draws, -1).gather(2, idx)
    c = correct[:, None, :].expand(-1, draws, -1).gather(2, idx).float()
    top = s == s.max(dim=2, keepdim=True).values
    return ((c * top).sum(dim=2) / top.sum(dim=2)).mean(dim=1)


def vote(answer_ids: torch.Tensor, correct: torch.Tensor, weights: torch.Tensor, size: int, draws: int,
         generator: torch.Generator) -> torch.Tensor:
    """Expected accuracy of the answer with the largest total weight among ``size`` random responses.

    Shapes: [P, n] each -> [P]. ``weights`` all 1: majority voting; sigmoid of a PRM score: PRM-weighted voting
    (Implicit PRM, Yuan et al. 2024). A response without an answer (id -1) casts no vote; a subset with no
    votes at all counts as wrong. An answer is correct when the responses giving it are (``correct``).
    """
    num_answers = int(answer_ids.max().item()) + 1 if answer_ids.numel() else 0
    if num_answers == 0:
        return torch.zeros(answer_ids.shape[0])
    p = answer_ids.shape[0]
    answer_correct = torch.zeros(p, num_answers)
    has = answer_ids >= 0
    rows = torch.arange(p)[:, None].expand_as(answer_ids)
    answer_correct[rows[has], answer_ids[has]] = correct[has].float()
    idx = _subsets(tuple(answer_ids.shape), size, draws, generator)
    a = answer_ids[:, None, :].expand(-1, draws, -1).gather(2, idx)
    w = weights[:, None, :].expand(-1, draws, -1).gather(2, idx).float() * (a >= 0)
    totals = torch.zeros(p, draws, num_answers).scatter_add_(2, a.clamp(min=0), w)
    top = (totals == totals.max(dim=2, keepdim=True).values) & (totals > 0)
    won = (top.float() * answer_correct[:, None, :]).sum(dim=2) / top.sum(dim=2).clamp(min=1)
    return won.mean(dim=1)


def bootstrap_interval(per_prompt: torch.Tensor, generator: torch.Generator, resamples: int = 1000,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean over prompts and its percentile bootstrap interval (prompts resampled)."""
    p = per_prompt.shape[0]
    picks = torch.randint(p, (resamples, p), generator=generator)
    means = per_prompt[picks].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype)).tolist()
    return float(per_prompt.mean()), low, high


def at_step_ends(values: torch.Tensor, end_pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A per-token quantity read at the last token of each step, compacted as step rewards are.

    Shapes: ``values`` [N, T], ``end_pos`` (long), ``valid`` [N, S] (from :func:`prm_rl.core.step_rewards`) ->
    [N, S], 0 where ``valid`` is False. E.g. the prefix value v_t (:func:`prm_rl.core.prefix_implicit_values`)
    at the end of every step.
    """
    picked = values.gather(1, end_pos)
    return torch.where(valid, picked, torch.zeros((), dtype=picked.dtype, device=picked.device))


def last_step(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each row's value at its last valid step: [N, S] -> [N], 0 for a row without a valid step."""
    last = (valid.sum(dim=1) - 1).clamp(min=0)
    picked = values.gather(1, last[:, None]).squeeze(1)
    return torch.where(valid.any(dim=1), picked, torch.zeros((), dtype=picked.dtype, device=picked.device))
