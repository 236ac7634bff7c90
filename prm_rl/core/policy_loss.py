"""Policy-gradient loss terms (PPO clip, KL estimators) and their exact, rank-split-safe aggregation.

Loss functions return per-token terms; :func:`aggregate` turns them into the scalar to backpropagate,
dividing by a denominator the caller computes over the global mini-batch.
"""
from __future__ import annotations

import torch

from .masked import _valid, masked_mean, masked_sum

__all__ = ["ppo_clip_loss", "kl_penalty", "approx_kl", "aggregate", "sampler_ratio", "sampler_correction"]

LOSS_AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")  # policy.loss_agg
RATIO_LEVELS = ("token", "sequence")  # policy.ratio_level
KL_ESTIMATORS = ("k1", "k3")  # policy.kl_estimator
IS_CORRECTIONS = ("none", "tis", "mask")  # rollout.is_correction
# exp(20) ~ 4.9e8: far outside any clip band, yet finite in float32 and bf16, so an extreme log-ratio
# (e.g. a token the old policy gave ~0 probability) cannot turn into inf and then NaN via inf * 0.
_LOG_RATIO_CLAMP = 20.0


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    clip_eps_high: float | None = None,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate, per token.

    Shapes: ``logp``, ``old_logp``, ``advantages``, ``mask`` [N, T] -> (token_loss [N, T],
    clipped [N, T] bool), both 0/False on invalid positions.
    Formula: ratio = exp(clamp(log_ratio, -20, 20)), log_ratio = logp - old_logp;
             loss = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps_high)), eps_high = eps unless given.
    The log-ratio is clamped before exp so the ratio stays finite (an overflowed ratio times a zero
    advantage would be NaN); a clamped token has zero gradient, which clipping gives it anyway except
    for A < 0 without dual clip.
    ``clip_eps_high`` (DAPO's clip-higher, Yu et al. 2025, arXiv 2503.14476, eps_high = 0.28 with eps = 0.2):
    a wider upper bound, so a token the old policy found unlikely can gain more probability per update.
    ``ratio_level="sequence"`` (GSPO, Zheng et al. 2025, arXiv 2507.18071, in its token form): every token of
    row i takes the row's length-normalised ratio s_i = exp(mean over valid t of (logp - old_logp)) as its
    value, log_ratio_t = sg(log s_i) + logp_t - sg(logp_t), so the gradient of token t is s_i * grad logp_t
    and the clip acts on whole sequences (GSPO uses eps ~3e-4 / 4e-4: sequence ratios stay close to 1).
    ``dual_clip = c > 1`` (dual-clip PPO, Ye et al. 2020, arXiv 1912.09729): for A < 0 the loss is
    further capped, loss = min(loss, -A * c), so a huge ratio on a bad token cannot dominate.
    ``clipped`` is True where a clipped branch determines the loss (the gradient through the ratio is
    0 there): a bound (strictly larger than the unclipped term, the usual clip fraction) or
    the dual-clip cap. PRIME uses eps = 0.2, token ratios and no dual clip (Cui et al. 2025, arXiv 2502.01456).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    valid = _valid(mask)
    log_ratio = logp - old_logp
    if ratio_level == "sequence":
        log_ratio = masked_mean(log_ratio, valid, dim=-1).detach()[:, None] + logp - logp.detach()
    elif ratio_level != "token":
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    ratio = torch.exp(torch.clamp(log_ratio, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped_term = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = torch.maximum(unclipped, clipped_term)
    clipped = clipped_term > unclipped
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = (advantages < 0) & (cap < loss)
        loss = torch.where(capped, cap, loss)
        clipped = clipped | capped
    return torch.where(valid, loss, _zero(loss)), clipped & valid


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta.

    Shapes: ``logp``, ``ref_logp`` [N, T] -> [N, T] (not masked: reduce with :func:`aggregate`).
    "k1": logp - ref_logp (unbiased, high variance, can be negative).
    "k3": with d = clamp(ref_logp - logp, -20, 20), exp(d) - d - 1 (Schulman's low-variance, always
    non-negative estimator, "Approximating KL divergence", 2020), clamped to [-10, 10] as veRL's
    ``low_var_kl`` does. PRIME trains with no KL term; this serves the option and logging.
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = torch.clamp(ref_logp - logp, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def sampler_ratio(old_logp: torch.Tensor, sampler_logp: torch.Tensor) -> torch.Tensor:
    """Per-token importance ratio of the trainer's pi_old to the sampler that drew the token.

    Shapes: [N, T] -> [N, T] (not masked). Formula: r = exp(clamp(old_logp - sampler_logp, -20, 20)). An
    inference engine (vLLM) computes the same policy's probabilities with other kernels and precision, so r
    drifts from 1 token by token; PPO's ratio is taken against pi_old, not against the sampler, and r is
    the part of the off-policy gap PPO does not see (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training").
    """
    return torch.exp(torch.clamp(old_logp - sampler_logp, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))


def sampler_correction(ratio: torch.Tensor, mode: str, cap: float) -> torch.Tensor:
    """Per-token weight on the policy loss that corrects for the sampler/trainer mismatch.

    Shapes: ``ratio`` [N, T] from :func:`sampler_ratio` -> [N, T], detached (a weight, not a gradient path).
    "none": 1. "tis" (truncated importance sampling, Yao et al. 2025): min(r, cap); the unbiased weight r,
    truncated above so that a token the sampler found far less likely than the trainer does cannot dominate.
    "mask": 1 where 1/cap <= r <= cap, else 0: tokens the two engines disagree on leave the loss (the
    denominator of :func:`aggregate` still counts them).
    """
    if mode == "none":
        return torch.ones_like(ratio)
    if mode == "tis":
        return torch.clamp(ratio, max=cap).detach()
    if mode == "mask":
        return ((ratio >= 1.0 / cap) & (ratio <= cap)).to(ratio.dtype).detach()
    raise ValueError(f"mode must be one of {IS_CORRECTIONS}, got {mode!r}")


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token approximate KL between the current and the rollout policy, a PPO diagnostic.

    Shapes: [N, T] -> [N, T] (not masked). Formula: 0.5 * (logp - old_logp)^2, Schulman's "k2"
    estimator, the ``approxkl`` reported by OpenAI's lm-human-preferences and TRL's PPO. (veRL's
    ``ppo_kl`` metric is instead the mean of old_logp - logp, i.e. k1.)
    """
    return 0.5 * (logp - old_logp) ** 2


def rows_with_gradient(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] bool: rows with a nonzero advantage at some valid token.

    Shapes: ``advantages``, ``mask`` [N, T] -> [N]. With A = 0 at every token, the PPO-clip loss
    -min(r A, clip(r) A) is 0 whatever the ratio r, so such a row adds nothing to the gradient (unless an
    entropy or KL term is in the loss); :func:`aggregate`'s global denominator still counts it.
    """
    return ((advantages != 0) & (mask != 0)).any(dim=-1)


def aggregate(token_values: torch.Tensor, mask: torch.Tensor, mode: str, denominator: float) -> torch.Tensor:
    """Reduce per-token loss terms to a scalar, with a denominator taken over the global mini-batch.

    Shapes: ``token_values``, ``mask`` [N, T] -> 0-dim tensor.
    "seq-mean-token-mean": sum_i (mean of row i over its valid tokens) / denominator, with
    denominator = number of sequences in the global mini-batch (PRIME's per-sequence token mean,
    averaged over sequences). "token-mean": sum of all valid token values / denominator, with
    denominator = number of valid tokens in the global mini-batch (the global token mean option).
    "seq-mean-token-sum-norm" (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783): sum of all valid token values /
    denominator, with denominator = sequences in the global mini-batch x a constant length (the response budget,
    ``rollout.max_new_tokens``): no per-response length normalisation, so a long wrong response is not
    penalised less per token than a short one.
    A row with no valid token contributes 0.
    Why the caller's global denominator: with the mini-batch split over R ranks, each rank returns
    (its partial sum) / (global denominator); these partial losses add up exactly to the single-rank
    loss. DeepSpeed averages gradients over ranks (divides by R), so the trainer multiplies each
    rank's loss by R and the averaged gradient equals the single-rank gradient exactly, whatever the
    split of sequences or tokens. A per-rank mean would weight ranks equally instead, which is wrong
    as soon as ranks hold different numbers of tokens.
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    if mode == "seq-mean-token-mean":
        return masked_mean(token_values, mask, dim=-1).sum() / denominator
    if mode in ("token-mean", "seq-mean-token-sum-norm"):  # they differ in the caller's denominator
        return masked_sum(token_values, mask) / denominator
    raise ValueError(f"mode must be one of {LOSS_AGGREGATIONS}, got {mode!r}")
