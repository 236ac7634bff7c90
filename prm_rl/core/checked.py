"""Credit from a task's own step checker: an oracle control, not a learnable method.

On a task whose every step can be checked (the built-in arithmetic task), the checker says where each response
first goes wrong. Two ways to use that, each a bound on what step-level credit could add to the same samples
(docs/algorithm.md, "Oracle controls"):

* as a process reward: +1 on the closing token of every step before the first wrong one, -1 on the first wrong
  step's (:func:`step_correctness_rewards`), mixed with the outcome as PRIME mixes a PRM's rewards; it gives signal
  in a group whose every response is wrong, where the outcome gives none;
* as localisation: a wrong response's outcome advantage kept only from its first wrong step on (or on that step
  alone), its correct prefix not blamed (:func:`first_error_credit`).

Shapes: ``ends`` [N, T] bool marks the last token of each step (:func:`prm_rl.core.segment_ends`, split
``step``); ``first_wrong`` [N] long is the 1-based first wrong step, 0 when every step is right.
"""
from __future__ import annotations

import torch

from .masked import _valid


def step_correctness_rewards(ends: torch.Tensor, first_wrong: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` float: +1 on the closing token of each step before ``first_wrong``, -1 on the first wrong step's,
    0 elsewhere (and after it); every step +1 when ``first_wrong`` is 0. A response that stops before its first
    wrong step (the checker counts a missing step as wrong) has it on its last step."""
    ends = _valid(ends)
    step = ends.long().cumsum(dim=1)  # on a closing token: the 1-based index of the step it closes
    wrong = torch.minimum(first_wrong.long(), ends.sum(dim=1))[:, None]
    right = ends & ((wrong == 0) | (step < wrong))
    return right.float() - (ends & (step == wrong) & (wrong > 0)).float()


def first_error_credit(advantages: torch.Tensor, step_rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                       through_end: bool) -> torch.Tensor:
    """``advantages`` [N, T] with every response the outcome calls wrong (``scores`` [N] below 1) credited from its
    first wrong step only: 0 on the steps before it, kept on it, and (``through_end``) on every token after it, else
    0 there too. The first wrong step is read off ``step_rewards`` (:func:`step_correctness_rewards`: its -1); a
    wrong response with none marked keeps all its advantages, as does every right one."""
    positions = torch.arange(advantages.shape[1], device=advantages.device)[None, :]
    width = advantages.shape[1]
    error_at = torch.where(step_rewards < 0, positions, width).min(dim=1).values[:, None]
    before = torch.where((step_rewards > 0) & (positions < error_at), positions, -1).max(dim=1).values[:, None]
    keep = positions > before
    if not through_end:
        keep &= positions <= error_at
    localised = (scores < 1)[:, None] & (error_at < width)
    keep = torch.where(localised, keep, torch.ones_like(keep))
    return torch.where(keep & _valid(mask), advantages, torch.zeros_like(advantages))
