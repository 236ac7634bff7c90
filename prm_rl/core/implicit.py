"""Implicit process reward model: token log-ratios, the PRM losses, and dense process rewards.

An implicit PRM parameterises an outcome reward as r(y) = beta * log(pi_phi(y) / pi_ref(y)); the partial
sums of the per-token log-ratio are soft Q values, so their increments are process rewards for free
(Implicit PRM, Yuan et al. 2024, arXiv 2412.01981). PRIME (Cui et al. 2025, arXiv 2502.01456) trains
the PRM online on outcome labels and feeds those token rewards to the policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .filters import _as_groups
from .masked import _last_token_mask, _valid, masked_sum

__all__ = [
    "PrmLoss",
    "PRM_LOSSES",
    "implicit_log_ratio",
    "sequence_reward",
    "prm_ce_loss",
    "dpo_pairs",
    "prm_dpo_loss",
    "prefix_implicit_values",
    "prm_prefix_loss",
    "pairwise_ranking_accuracy",
    "process_rewards",
    "normalize_by_max_return",
]

GRANULARITIES = ("token", "step", "whole")  # reward.granularity


def _zeros_like_scalar(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def implicit_log_ratio(prm_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-ratio of the PRM to its reference: the increments of q_t / beta.

    Shapes: ``prm_logp``, ``ref_logp``, ``mask`` [N, T] -> [N, T].
    Formula: log pi_phi(y_t | y_<t) - log pi_ref(y_t | y_<t) on valid tokens, exactly 0 elsewhere
    (Implicit PRM, Yuan et al. 2024, arXiv 2412.01981). Gradients flow to ``prm_logp``; the reference
    is frozen (or is the rollout policy's old log-probs, an option of both PRIME implementations).
    """
    diff = prm_logp - ref_logp.to(prm_logp.dtype)
    return torch.where(_valid(mask), diff, _zeros_like_scalar(diff))


def sequence_reward(log_ratio: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Outcome reward of each response under the implicit PRM.

    Shapes: ``log_ratio``, ``mask`` [N, T] -> [N]. Formula: r(y) = beta * sum_{t valid} log_ratio_t.
    PRIME trains with beta = 0.05 (Cui et al. 2025, arXiv 2502.01456).
    """
    return beta * masked_sum(log_ratio, mask, dim=-1)


def prm_ce_loss(seq_reward: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-response cross-entropy loss of the implicit PRM on outcome labels.

    Shapes: ``seq_reward`` [N] (beta already applied), ``labels`` [N] in [0, 1] -> [N].
    Formula: -[o * log sigmoid(r) + (1 - o) * log(1 - sigmoid(r))], soft labels o (e.g. a fraction of
    unit tests passed) allowed. Computed from the logit r with ``binary_cross_entropy_with_logits``, so
    it is exact for large |r|; veRL's port applies sigmoid first and then BCE, which saturates (PyTorch
    clamps the log at -100) but is otherwise the same loss (PRIME, Cui et al. 2025, arXiv 2502.01456;
    Implicit PRM, Yuan et al. 2024, arXiv 2412.01981). Reduce with :func:`prm_rl.core.aggregate`-style
    global denominators, or ``.mean()`` on one rank.
    """
    return F.binary_cross_entropy_with_logits(seq_reward, labels.to(seq_reward.dtype), reduction="none")


def dpo_pairs(labels: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (better, worse) pair of responses to the same prompt.

    Shapes: ``labels`` [N] -> (``chosen_idx`` [P], ``rejected_idx`` [P]) long, indices into the batch.
    A pair (i, j) inside one group is emitted once, as chosen = i, rejected = j, whenever
    label_i > label_j; pairs with equal labels are skipped. Order: by group, then chosen, then rejected.
    These are the correct-vs-incorrect pairs the DPO variant of the Implicit PRM trains on
    (Yuan et al. 2024, arXiv 2412.01981).
    """
    grouped = _as_groups(labels, group_size)
    better = grouped[:, :, None] > grouped[:, None, :]  # [G, K, K]: row i beats column j
    g, i, j = better.nonzero(as_tuple=True)
    return g * group_size + i, g * group_size + j


def prm_dpo_loss(seq_reward: torch.Tensor, chosen_idx: torch.Tensor, rejected_idx: torch.Tensor) -> torch.Tensor:
    """Pairwise (DPO / Bradley-Terry) loss of the implicit PRM.

    Shapes: ``seq_reward`` [N] (beta applied), index tensors [P] -> [P].
    Formula: -log sigmoid(r_chosen - r_rejected), i.e. the DPO objective on the implicit reward
    (Implicit PRM, Yuan et al. 2024, arXiv 2412.01981; PRIME's alternative PRM loss). The veRL port's
    ``dpo`` option is a different, detached variant against batch-averaged rewards; this is the
    paper's pairwise form.
    """
    return -F.logsigmoid(seq_reward[chosen_idx] - seq_reward[rejected_idx])


def prefix_implicit_values(log_ratio: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Implicit value of every response prefix, length-normalised (IPVRM, arXiv 2604.13197).

    Shapes: ``log_ratio``, ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: v_t = beta * (sum_{s<=t} log_ratio_s) / (number of valid tokens s <= t).
    """
    valid = _valid(mask)
    lr = torch.where(valid, log_ratio, _zeros_like_scalar(log_ratio))
    count = valid.to(lr.dtype).cumsum(dim=-1).clamp(min=1)
    return torch.where(valid, beta * lr.cumsum(dim=-1) / count, _zeros_like_scalar(lr))


def prm_prefix_loss(log_ratio: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor, targets: torch.Tensor,
                    beta: float, margin: float = 0.0) -> torch.Tensor:
    """Per-response BCE of the implicit PRM on the value of every prefix that ends a step (IPVRM's per-prefix loss,
    read at step ends).

    Shapes: ``log_ratio``, ``mask``, ``ends`` (bool: the prefixes judged, e.g. each step's last token and the
    row's last token), ``targets`` (in [0, 1] per position: the response's outcome broadcast, or a prefix-tree
    value) [N, T] -> [N].
    Formula: with v_t = :func:`prefix_implicit_values`, loss_i = mean over judged t of
    -[y_t log sigmoid(v_t - m) + (1 - y_t) log sigmoid(-(v_t + m))]. The sequence loss (:func:`prm_ce_loss`)
    constrains only the sum of the log-ratios; this one constrains every judged prefix. A row with no judged
    prefix contributes 0.
    """
    judged = _valid(ends) & _valid(mask)
    v = prefix_implicit_values(log_ratio, mask, beta)
    y = targets.to(v.dtype)
    per_prefix = -(y * F.logsigmoid(v - margin) + (1 - y) * F.logsigmoid(-(v + margin)))
    per_prefix = torch.where(judged, per_prefix, _zeros_like_scalar(per_prefix))
    return per_prefix.sum(dim=-1) / judged.sum(dim=-1).clamp(min=1)


def pairwise_ranking_accuracy(
    seq_reward: torch.Tensor, labels: torch.Tensor, group_size: int, tie_credit: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """How often the PRM orders two responses to the same prompt as their labels do, gap-weighted.

    Shapes: ``seq_reward``, ``labels`` [N] -> (weighted_correct, total_weight), two 0-dim tensors.
    Over every unordered pair (i, j) in a group with w = |label_i - label_j| > 0:
    correct = sign(r_i - r_j) == sign(label_i - label_j), a reward tie counting ``tie_credit`` (0 in training
    logs; held-out evaluation gives 1/2, so an untrained PRM, whose rewards all tie, scores chance),
    weighted_correct = sum w * correct, total_weight = sum w; accuracy = their ratio, pooled over pairs,
    so sums from several batches or ranks can be added before dividing.
    PRIME (Cui et al. 2025, arXiv 2502.01456) logs this as PRM accuracy. Differences from the veRL
    port's ``compute_dpo_accuracy``: there a group whose labels are all equal counts as 0.5 and the
    per-group ratios are averaged with equal weight; here such groups carry weight 0 and pairs are
    pooled. veRL also counts a reward tie as correct when label_i < label_j.
    """
    r = _as_groups(seq_reward.detach(), group_size)
    y = _as_groups(labels.to(r.dtype), group_size)
    upper = torch.triu(torch.ones(group_size, group_size, dtype=torch.bool, device=r.device), diagonal=1)
    r_diff = (r[:, :, None] - r[:, None, :])[:, upper]
    y_diff = (y[:, :, None] - y[:, None, :])[:, upper]
    weight = y_diff.abs()
    correct = (torch.sign(r_diff) == torch.sign(y_diff)).to(r.dtype)
    correct = torch.where(r_diff == 0, torch.full_like(correct, tie_credit), correct)
    return (correct * weight).sum(), weight.sum()


def _step_sums(rewards: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sum rewards over spans closed by ``ends`` and write each total at its closing position."""
    ends_long = ends.to(torch.long)
    # span id of a token = number of span ends strictly before it; always <= T-1
    span_id = ends_long.cumsum(-1) - ends_long
    totals = torch.zeros_like(rewards).scatter_add_(1, span_id, rewards)
    return torch.where(ends, totals.gather(1, span_id), _zeros_like_scalar(rewards))


def process_rewards(
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    *,
    scale_by_beta: bool,
    granularity: str,
    step_end: torch.Tensor | None,
    reward_eos: bool,
) -> torch.Tensor:
    """Dense rewards for the policy from the implicit PRM's token log-ratios.

    Shapes: ``log_ratio``, ``mask``, ``step_end`` [N, T] -> [N, T], 0 on invalid positions.
    Steps, in this order:
      1. r_t = beta * log_ratio_t if ``scale_by_beta`` (veRL port) else log_ratio_t (authors' code of
         PRIME, Cui et al. 2025, arXiv 2502.01456); 0 on invalid tokens.
      2. ``reward_eos=False`` sets r to 0 on each row's last valid token (the veRL port gives the last
         token no process reward); ``True`` keeps it (the authors' code rewards EOS).
      3. Granularity, applied to the result of 2 (so with ``reward_eos=False`` the last token's
         log-ratio is excluded from the last step's and the whole-response sum):
         - "token": r_t as is (PRIME's default);
         - "step": spans end at every valid token where ``step_end`` is True and at the last valid
           token; each span's sum of r is placed on its last token, 0 elsewhere (a step reward
           q_k - q_{k-1}, Implicit PRM, Yuan et al. 2024, arXiv 2412.01981);
         - "whole": the row sum placed on the last valid token (what the veRL port's "whole" intends;
           its indexing there is buggy).
    Normalisation by the largest return is separate: :func:`normalize_by_max_return`.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    valid = _valid(mask)
    zero = _zeros_like_scalar(log_ratio)
    rewards = log_ratio * beta if scale_by_beta else log_ratio
    rewards = torch.where(valid, rewards, zero)
    last = _last_token_mask(valid)
    if not reward_eos:
        rewards = torch.where(last, zero, rewards)
    if granularity == "token":
        return rewards
    if granularity == "whole":
        return torch.where(last, rewards.sum(dim=-1, keepdim=True), zero)
    if step_end is None:
        raise ValueError('granularity "step" needs a step_end tensor marking the last token of each step')
    ends = (_valid(step_end) & valid) | last
    return _step_sums(rewards, ends)


def normalize_by_max_return(rewards: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rescale process rewards so the largest process return in the batch has magnitude ~1.

    Shapes: ``rewards``, ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: r / (max_{i,t} |sum_{s>=t} r_i^s| + eps), the max over every position of the batch
    (PRIME's default "batch_norm" of process rewards, both implementations; the veRL port also adds
    eps = 1e-6). If that max is 0 (all rewards 0) the rewards are returned unchanged. Statistics are
    over whatever batch is passed: give it the global batch.
    """
    valid = _valid(mask)
    r = torch.where(valid, rewards, _zeros_like_scalar(rewards))
    returns = r.flip(-1).cumsum(-1).flip(-1)
    if returns.numel() == 0:
        return r
    peak = returns.abs().max()
    # no host sync: choose the divisor on the device
    divisor = torch.where(peak > 0, peak + eps, torch.ones_like(peak))
    return r / divisor


# ----------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class PrmLossInputs:
    """What a PRM loss reads from one group-aligned micro-batch of n responses."""

    log_ratio: torch.Tensor  # [n, T] log pi_phi - log pi_ref, with gradient
    mask: torch.Tensor  # [n, T] response tokens
    labels: torch.Tensor  # [n] outcome scores in [0, 1]
    group_size: int
    beta: float
    prefix_ends: torch.Tensor | None = None  # [n, T] bool: prefixes the prefix loss judges (step ends)
    prefix_targets: torch.Tensor | None = None  # [n, T] each judged prefix's target; None: the row's outcome
    margin: float = 0.0


@dataclass(frozen=True)
class PrmLoss:
    """A PRM loss as the update needs it: ``summed(inputs)`` is the loss summed over a group-aligned micro-batch,
    and ``terms(labels [m], group_size)`` how many terms a whole mini-batch has (the global denominator, so
    micro-batching and ranks do not change the mean). ``per_prefix``: the loss reads step ends and per-prefix
    targets."""

    summed: Callable[[PrmLossInputs], torch.Tensor]
    terms: Callable[[torch.Tensor, int], int]
    per_prefix: bool = False


def _seq(x: PrmLossInputs) -> torch.Tensor:
    return sequence_reward(x.log_ratio, x.mask, x.beta)


def _prefix(x: PrmLossInputs) -> torch.Tensor:
    targets = x.labels[:, None].expand_as(x.mask) if x.prefix_targets is None else x.prefix_targets
    return prm_prefix_loss(x.log_ratio, x.mask, x.prefix_ends, targets, x.beta, x.margin).sum()


# ``prm.loss`` names a key here; the config's allowed values are these keys.
PRM_LOSSES: dict[str, PrmLoss] = {
    "ce": PrmLoss(summed=lambda x: prm_ce_loss(_seq(x), x.labels).sum(),
                  terms=lambda labels, k: labels.numel()),
    "dpo": PrmLoss(summed=lambda x: prm_dpo_loss(_seq(x), *dpo_pairs(x.labels, x.group_size)).sum(),
                   terms=lambda labels, k: dpo_pairs(labels, k)[0].numel()),
    "prefix": PrmLoss(summed=_prefix, terms=lambda labels, k: labels.numel(), per_prefix=True),
}
