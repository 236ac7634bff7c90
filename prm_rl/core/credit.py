"""How dense process rewards are credited to the tokens before them, and the self-guided step advantage.

PRIME sums rewards into returns (``sum``). PURE (Cheng et al. 2025, arXiv 2504.15275) found that summed
process returns invite reward hacking and credits with the minimum instead: ``min``, return_t = min over
s >= t of r_s, or ``softmin``, r_t <- r_t * softmax_t(-r / T) over a response's rewards, then summed (it tends
to the min as T -> 0). Both are written here as *credited rewards*: a reward sequence whose reverse
cumulative sum is the wanted return, so RLOO baselines, discounting and whitening apply unchanged after it.

Rewards sit on ``carriers``: every valid token (granularity ``token``), the step ends (``step``) or the last
token (``whole``); the min and the softmax range over carriers only, never over the zeros between them.
"""
from __future__ import annotations

import torch

from .masked import _last_token_mask, _valid

__all__ = ["CREDITS", "credit_rewards", "masked_step_advantage", "reward_carriers"]

CREDITS = ("sum", "min", "softmin")


def reward_carriers(mask: torch.Tensor, granularity: str, step_end: torch.Tensor | None,
                    reward_eos: bool) -> torch.Tensor:
    """[N, T] bool: the positions :func:`~prm_rl.core.implicit.process_rewards` puts a reward on, for the same
    arguments: every valid token (``token``; the last one only with ``reward_eos``), each step's last token
    and the row's last token (``step``), the last token (``whole``)."""
    valid = _valid(mask)
    last = _last_token_mask(valid)
    if granularity == "token":
        return valid if reward_eos else valid & ~last
    if granularity == "whole":
        return last
    return (_valid(step_end) & valid) | last


def _suffix_min(values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """[N, T] -> [N, T]: min over s >= t of values[s] where ``present``; +inf where none is."""
    filled = torch.where(present, values, torch.full_like(values, float("inf")))
    return filled.flip(-1).cummin(-1).values.flip(-1)


def credit_rewards(rewards: torch.Tensor, carriers: torch.Tensor, how: str, temperature: float = 0.1) -> torch.Tensor:
    """Credited rewards whose reverse cumulative sum (gamma 1) is the return ``how`` asks for.

    Shapes: ``rewards``, ``carriers`` [N, T] -> [N, T], 0 off the carriers' span.
    ``sum``: the rewards as they are (PRIME). ``min``: r'_t = G_t - G_{t+1} with G_t = min over carriers
    s >= t of r_s, so the return at t is the worst reward still ahead (PURE, strict min-form). ``softmin``:
    r'_t = r_t * softmax(-r / T)_t over the row's carriers (PURE's default, T = 0.1): each row's rewards sum
    to a softmin of them.
    """
    if how not in CREDITS:
        raise ValueError(f"credit must be one of {CREDITS}, got {how!r}")
    on = _valid(carriers)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(on, rewards, zero)
    if how == "sum":
        return r
    if how == "softmin":
        if not temperature > 0:
            raise ValueError(f"softmin temperature must be > 0, got {temperature}")
        logits = torch.where(on, -r / temperature, torch.full_like(r, float("-inf")))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row without carriers: all -inf -> 0
        return torch.where(on, r * weights, zero)
    returns = _suffix_min(r, on)
    returns = torch.where(torch.isinf(returns), zero, returns)  # past the last carrier: nothing ahead
    following = torch.cat([returns[:, 1:], torch.zeros_like(returns[:, :1])], dim=1)
    return returns - following


def masked_step_advantage(cumulative: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """SPRO's masked step advantage (arXiv 2507.01551): MSA_{i,t} = CPR_{i,t} - mean over the responses j of
    i's group still running at t (|y_j| > t) of CPR_{j,t}.

    Shapes: ``cumulative`` (CPR, the cumulative process reward up to each token), ``mask`` [N, T] -> [N, T],
    0 on invalid positions. Groups of ``group_size`` contiguous rows.
    """
    valid = _valid(mask)
    n, t = cumulative.shape
    c = torch.where(valid, cumulative.float(), torch.zeros((), device=cumulative.device))
    grouped_sum = c.view(n // group_size, group_size, t).sum(dim=1, keepdim=True)
    running = valid.float().view(n // group_size, group_size, t).sum(dim=1, keepdim=True)
    mean = (grouped_sum / running.clamp(min=1)).expand(-1, group_size, -1).reshape(n, t)
    return torch.where(valid, c - mean, torch.zeros((), device=cumulative.device))
