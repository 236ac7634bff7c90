"""The outcome score as the estimators read it, and the [0, 1] labels the PRM and the filter read off it.

A verifier scores in [0, 1]; a learned reward model scores any real (its logit). Shaping terms are added to the
score the advantage estimator reads: DAPO's soft overlong penalty and, per token, a KL penalty against the
reference. The PRM's loss (a BCE or a pairwise preference) and the accuracy-band filter need values in [0, 1]: they
read labels derived from the verifier's (or reward model's) score by a rule, never the shaped score.
"""
from __future__ import annotations

import torch

from .masked import _valid
from .policy_loss import kl_penalty

__all__ = ["OUTCOME_LABELS", "outcome_labels", "overlong_penalty", "kl_rewards"]

OUTCOME_LABELS = ("score", "threshold", "sigmoid")  # reward.outcome_labels


def outcome_labels(scores: torch.Tensor, rule: str = "score", threshold: float = 0.0) -> torch.Tensor:
    """[0, 1] labels of outcome scores, for the PRM's loss and the accuracy-band filter.

    Shapes: ``scores`` [N] -> [N] float. ``score``: the score itself, which must then lie in [0, 1] (ValueError
    naming the option otherwise); ``threshold``: 1 where score > ``threshold``, else 0 (a response counts as
    correct); ``sigmoid``: sigmoid(score - ``threshold``), a soft label (a Bradley-Terry reward model's logit
    read as the probability that the response is good).
    """
    s = scores if scores.is_floating_point() else scores.float()
    if rule == "score":
        if s.numel() and not bool(((s >= 0) & (s <= 1)).all()):
            raise ValueError(f"outcome scores outside [0, 1] (min {float(s.min()):.4g}, max {float(s.max()):.4g}): "
                             "set reward.outcome_labels=threshold or sigmoid to derive the labels from them")
        return s
    if rule == "threshold":
        return (s > threshold).to(s.dtype)
    if rule == "sigmoid":
        return torch.sigmoid(s - threshold)
    raise ValueError(f"rule must be one of {OUTCOME_LABELS}, got {rule!r}")


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), added to the outcome score.

    Shapes: ``lengths`` [N] response tokens (EOS included) -> [N] float, each in [-factor, 0].
    Formula, with L_max = ``max_length`` and L_cache = ``buffer``: 0 for |y| <= L_max - L_cache;
    ((L_max - L_cache) - |y|) / L_cache * factor inside the buffer, falling linearly to -factor at |y| = L_max;
    -factor beyond it. (DAPO: factor 1, L_max 20480, L_cache 4096; the authors' veRL recipe calls these
    ``overlong_buffer.len`` and ``penalty_factor``.)
    """
    if buffer <= 0:
        raise ValueError(f"buffer must be > 0, got {buffer}")
    excess = (lengths.float() - (max_length - buffer)).clamp(min=0, max=buffer)
    return -factor * excess / buffer


def kl_rewards(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, coef: float,
               estimator: str = "k1") -> torch.Tensor:
    """Per-token KL penalty as a reward: -coef * KL(pi_old || pi_ref) estimated at each sampled token.

    Shapes: ``old_logp`` (the policy that sampled), ``ref_logp``, ``mask`` [N, T] -> [N, T], 0 on invalid
    positions. KL by :func:`~prm_rl.core.kl_penalty`'s ``k1`` (log pi_old - log pi_ref, REINFORCE++'s and the
    default of veRL's ``use_kl_in_reward`` and OpenRLHF) or ``k3``. A reward, not a loss: no gradient flows
    through it (pi_old is the detached sampling policy).
    """
    rewards = -coef * kl_penalty(old_logp.detach(), ref_logp, estimator)
    return torch.where(_valid(mask), rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))
