"""How good an implicit PRM is: outcome and step-level metrics against held-out labels.

Pure tensor functions, used only to *judge* a PRM (step labels never reach training). The step-level
metrics follow the Implicit PRM paper's reading of a response (Yuan et al. 2024, arXiv 2412.01981): the
reward of step k is q_k - q_{k-1}, the beta-scaled sum of the token log-ratios inside the step.

Step labels are given per response as ``first_wrong`` [N] long: the 1-based index of the first wrong
step, or 0 when every step is right (or no step can be checked). Steps after the first error are left out
of every step metric: once a step is wrong, whether a later one is "right" is not defined.
"""
from __future__ import annotations

import torch

from .implicit import _step_sums
from .masked import _last_token_mask, _valid

__all__ = ["auroc", "constant_guess_ce", "step_rewards", "step_auroc", "first_error_hits", "first_error_hit_rate",
           "monte_carlo_values", "value_increments"]


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2.

    Shapes: ``scores`` [M] float, ``positive`` [M] bool -> float. NaN when either class is empty.
    Computed from average ranks (Mann-Whitney U), so tied scores get the midrank and count one half.
    """
    scores, positive = scores.detach().double().flatten(), positive.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    # midranks: every member of a run of equal scores gets the mean of the run's 1-based ranks
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = mid[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def constant_guess_ce(labels: torch.Tensor) -> float:
    """Cross-entropy of the best constant prediction, the label mean p: mean_i BCE(p, o_i).

    Shapes: ``labels`` [N] in [0, 1] -> float. A PRM whose held-out CE is not below this has learned
    nothing about which responses are right. ``nan`` for an empty batch.
    """
    labels = labels.double()
    if labels.numel() == 0:
        return float("nan")
    p = labels.mean().clamp(1e-12, 1 - 1e-12)
    return float(-(labels * p.log() + (1 - labels) * (1 - p).log()).mean())


def step_rewards(log_ratio: torch.Tensor, mask: torch.Tensor, step_end: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step rewards q_k - q_{k-1} of each response, compacted to one column per step.

    Shapes: ``log_ratio``, ``mask``, ``step_end`` [N, T] -> (``rewards`` [N, S], ``valid`` [N, S] bool,
    ``end_pos`` [N, S] long), S = the most steps in any row. A step is a span of valid tokens closed by a
    token with ``step_end`` set or by the row's last valid token; its reward is beta times the sum of the
    span's token log-ratios, and ``end_pos`` is the span's last token (where a heatmap marks it).
    """
    valid = _valid(mask)
    ends = (_valid(step_end) & valid) | _last_token_mask(valid)
    sums = _step_sums(torch.where(valid, log_ratio, torch.zeros_like(log_ratio)) * beta, ends)
    counts = ends.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    rewards = torch.zeros(ends.shape[0], width, dtype=log_ratio.dtype, device=log_ratio.device)
    end_pos = torch.zeros(ends.shape[0], width, dtype=torch.long, device=log_ratio.device)
    step_valid = torch.arange(width, device=log_ratio.device)[None, :] < counts[:, None]
    rows, cols = ends.nonzero(as_tuple=True)
    slot = (ends.long().cumsum(dim=1) - 1)[rows, cols]
    rewards[rows, slot] = sums[rows, cols]
    end_pos[rows, slot] = cols
    return rewards, step_valid, end_pos


# response_score's aggregations of the step rewards (docs/prm_eval.md, "Scoring responses")
SCORE_AGGREGATIONS = ("min", "mean", "sum")


def response_score(rewards: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """One score per response from its step rewards, as best-of-N ranks responses.

    Shapes: ``rewards``, ``valid`` [N, S] (from :func:`step_rewards`) -> [N]. ``min``: the worst step (the
    Implicit PRM paper's response score: a solution is as good as its weakest step); ``mean``: the average
    step; ``sum``: q_K, the telescoped sum of q_k - q_{k-1}, which is the whole response's implicit reward
    beta * sum_t log-ratio (the "last q"). A row without a valid step scores 0.
    """
    if how not in SCORE_AGGREGATIONS:
        raise ValueError(f"how must be one of {SCORE_AGGREGATIONS}, got {how!r}")
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    count = valid.sum(dim=1)
    total = torch.where(valid, rewards, zero).sum(dim=1)
    if how == "sum":
        return total
    if how == "mean":
        return torch.where(count > 0, total / count.clamp(min=1), zero)
    worst = torch.where(valid, rewards, torch.full_like(rewards, float("inf"))).min(dim=1).values
    return torch.where(count > 0, worst, zero)


def _judged_steps(valid: torch.Tensor, first_wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [N, S], wrong [N, S]): steps before the first error, and the first wrong step itself."""
    index = torch.arange(1, valid.shape[1] + 1, device=valid.device)[None, :]
    f = first_wrong.to(valid.device)[:, None]
    correct = valid & ((f == 0) | (index < f))
    wrong = valid & (f > 0) & (index == f)
    return correct, wrong


def step_auroc(rewards: torch.Tensor, valid: torch.Tensor, first_wrong: torch.Tensor) -> float:
    """AUROC of step rewards separating correct steps (positives) from first wrong steps (negatives).

    Shapes: ``rewards``, ``valid`` [N, S] (from :func:`step_rewards`), ``first_wrong`` [N] long -> float.
    A response whose first wrong step lies beyond its last step (e.g. it stopped early) contributes only
    its correct steps. Random scoring gives 0.5; NaN when a class is empty.
    """
    correct, wrong = _judged_steps(valid, first_wrong)
    judged = correct | wrong
    return auroc(rewards[judged], correct[judged])


def first_error_hits(rewards: torch.Tensor, valid: torch.Tensor,
                     first_wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per wrong response: did its lowest step reward sit on its first wrong step?

    Shapes: ``rewards``, ``valid`` [N, S], ``first_wrong`` [N] long -> (``hits`` [n] float, ``chance`` [n]
    float, ``rows`` [N] bool), over the n responses whose first wrong step is one of their steps (``rows``).
    When several steps share the lowest reward, the hit is 1/(number tied) if the first wrong step is among
    them; ``chance`` is a uniformly random step's hit, 1/(steps in the response).
    """
    _, wrong = _judged_steps(valid, first_wrong)
    rows = wrong.any(dim=1)
    r, v, w = rewards[rows].double(), valid[rows], wrong[rows]
    masked = torch.where(v, r, torch.full_like(r, float("inf")))
    lowest = v & (masked == masked.min(dim=1, keepdim=True).values)
    hits = (lowest & w).sum(dim=1).double() / lowest.sum(dim=1).double()
    return hits, 1.0 / v.sum(dim=1).double(), rows


def first_error_hit_rate(rewards: torch.Tensor, valid: torch.Tensor,
                         first_wrong: torch.Tensor) -> tuple[float, float, int]:
    """How often a wrong response's lowest step reward sits on its first wrong step.

    Shapes: ``rewards``, ``valid`` [N, S], ``first_wrong`` [N] long -> (hit_rate, random_baseline, n): the
    means of :func:`first_error_hits` over its n responses. NaNs when n = 0.
    """
    hits, chance, _ = first_error_hits(rewards, valid, first_wrong)
    if hits.numel() == 0:
        return float("nan"), float("nan"), 0
    return float(hits.mean()), float(chance.mean()), hits.numel()


def monte_carlo_values(successes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo step values from K completions of each step prefix (Math-Shepherd, Wang et al. 2024):
    ``soft`` = the share of completions that reach a correct answer, ``hard`` = 1 if any does.

    Shapes: ``successes`` [..., K] in [0, 1] (a completion's outcome score) -> (``soft``, ``hard``) [...].
    """
    correct = (successes >= 1.0).to(torch.float32)
    return correct.mean(dim=-1), correct.amax(dim=-1)


def value_increments(values: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Step rewards V_k - V_{k-1} of step values, V_0 = ``start`` (the value of the bare prompt).

    Shapes: ``values`` [N, S], ``start`` [N] -> [N, S]. Entries past a row's last step are left as they come
    (callers mask them with the steps' ``valid``).
    """
    previous = torch.cat([start[:, None].to(values.dtype), values[:, :-1]], dim=1)
    return values - previous
