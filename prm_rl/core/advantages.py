"""Critic-free advantage estimators: leave-one-out (RLOO) for PRIME, GRPO and REINFORCE++.

Batch layout: N = G * K responses, groups contiguous (rows g*K .. g*K+K-1 answer prompt g); token
tensors [N, T] right-padded with a response ``mask``. Pass the global batch: the whitening statistics
and the group baselines must see every response.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .checked import first_error_credit
from .credit import masked_step_advantage
from .filters import _as_groups
from .masked import _last_token_mask, _valid, masked_mean, masked_whiten

__all__ = [
    "rloo_outcome",
    "rloo_process",
    "grpo_outcome",
    "place_on_last_token",
    "discounted_returns",
    "prime_advantages",
    "grpo_advantages",
    "spro_advantages",
    "tree_advantages",
    "reinforce_pp_advantages",
    "AdvantageEstimator",
    "ADVANTAGE_ESTIMATORS",
    "register_advantage",
]


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def rloo_outcome(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantage of each response's outcome score.

    Shapes: ``scores`` [N] -> [N]. Formula: A_i = o_i - mean_{j != i, same group} o_j
    = (K o_i - sum_j o_j) / (K - 1). Needs K >= 2 (ValueError otherwise).
    PRIME's outcome term (Cui et al. 2025, arXiv 2502.01456; same in both implementations).
    """
    o = _as_groups(_float(scores), group_size, min_size=2, what="rloo_outcome")
    others_mean = (o.sum(dim=1, keepdim=True) - o) / (group_size - 1)
    return (o - others_mean).reshape(-1)


def rloo_process(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out baseline for dense process rewards, per token.

    Shapes: ``rewards``, ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula (PRIME reference section 2.7): r_hat_i^t = r_i^t * K/(K-1) - (sum_{j in group} m_j)/(K-1),
    where m_j is the mean of r_j over row j's valid tokens. Equivalently
    r_hat_i^t = (r_i^t - mean_{j!=i} m_j) + (r_i^t - m_i)/(K-1), so the row mean of r_hat_i is the
    leave-one-out advantage m_i - mean_{j!=i} m_j. Behaves as the veRL port's ``masked_rloo`` on the
    token rewards, whose mask is the whole response, so a zeroed last token still counts in m_j
    (PRIME, Cui et al. 2025, arXiv 2502.01456). Needs K >= 2.
    """
    rewards = _float(rewards)
    valid = _valid(mask)
    row_means = masked_mean(rewards, valid, dim=-1)  # [N]
    grouped = _as_groups(row_means, group_size, min_size=2, what="rloo_process")
    baseline = (grouped.sum(dim=1, keepdim=True) / (group_size - 1)).expand_as(grouped).reshape(-1, 1)
    out = rewards * (group_size / (group_size - 1)) - baseline
    return torch.where(valid, out, _zero(out))


def grpo_outcome(
    scores: torch.Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> torch.Tensor:
    """GRPO's group-normalised outcome advantage.

    Shapes: ``scores`` [N] -> [N]. Formula: (o_i - mean_g) / (std_g + eps), std_g the unbiased
    (Bessel-corrected, K-1 denominator) standard deviation like ``torch.std``'s default and veRL's
    GRPO estimator; ``scale_by_std=False`` returns o_i - mean_g (Dr. GRPO style). Needs K >= 2 (veRL
    instead maps a group of one to mean 0, std 1).
    """
    o = _as_groups(_float(scores), group_size, min_size=2, what="grpo_outcome")
    centred = o - o.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (o.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def place_on_last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sparse token tensor carrying one value per row on its last valid token.

    Shapes: ``values`` [N], ``mask`` [N, T] -> [N, T]; out[i, last_i] = values[i], 0 elsewhere.
    """
    values = _float(values)
    return torch.where(_last_token_mask(mask), values[:, None], _zero(values))


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Reward-to-go of every token.

    Shapes: ``rewards``, ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: G_t = sum_{s >= t, s valid} gamma^(s-t) r_s. gamma = 1 (PRIME's setting, both
    implementations) is a reverse cumulative sum; other gammas use a backward scan over T.
    """
    rewards = _float(rewards)
    valid = _valid(mask)
    zero = _zero(rewards)
    r = torch.where(valid, rewards, zero)
    if gamma == 1.0:
        returns = r.flip(-1).cumsum(-1).flip(-1)
    else:
        # a closed form gamma^-t * revcumsum(gamma^s r_s) overflows for long T, so scan instead
        returns = torch.empty_like(r)
        running = torch.zeros_like(r[:, 0])
        for t in range(r.shape[1] - 1, -1, -1):
            running = r[:, t] + gamma * running
            returns[:, t] = running
    return torch.where(valid, returns, zero)


def prime_advantages(
    outcome_scores: torch.Tensor,
    process_rewards: torch.Tensor | None,
    mask: torch.Tensor,
    group_size: int,
    *,
    outcome_coef: float = 1.0,
    process_coef: float = 1.0,
    process_gamma: float = 1.0,
    outcome_gamma: float = 1.0,
    whiten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRIME's advantages: RLOO per reward source, summed, turned into returns, then whitened.

    Shapes: ``outcome_scores`` [N], ``process_rewards`` [N, T] or None, ``mask`` [N, T]
    -> (advantages [N, T], returns [N, T]), both 0 on invalid positions.
    Formula: returns = outcome_coef * discounted_returns(place_on_last_token(rloo_outcome(o)), outcome_gamma)
                       + process_coef * discounted_returns(rloo_process(process_rewards), process_gamma);
             advantages = masked_whiten(returns) if ``whiten``. Two discounts, as the authors' code has
             (``verifier_gamma``, ``reward_model_gamma``); with one gamma for both this is
             discounted_returns(outcome + process, gamma), discounting being linear.
    With gamma = 1 every token of response i sees its full outcome RLOO value plus the process return
    from that token on (PRIME, Cui et al. 2025, arXiv 2502.01456; the veRL port's
    ``compute_rloo_advantage_return`` with gt_coef/dpo_coef). ``process_rewards=None`` gives the
    outcome-only RLOO baseline. Whitening uses all valid tokens of the batch passed (pass the global
    batch).
    """
    outcome = place_on_last_token(rloo_outcome(outcome_scores, group_size), mask)
    returns = outcome_coef * discounted_returns(outcome, mask, outcome_gamma)
    if process_rewards is not None:
        process = rloo_process(process_rewards, mask, group_size)
        returns = returns + process_coef * discounted_returns(process, mask, process_gamma)
    advantages = masked_whiten(returns, mask) if whiten else returns
    return advantages, returns


def grpo_advantages(
    outcome_scores: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> torch.Tensor:
    """GRPO baseline: the group-normalised outcome advantage on every valid token.

    Shapes: ``outcome_scores`` [N], ``mask`` [N, T] -> [N, T]; out[i, t] = grpo_outcome(o)_i where
    valid, 0 elsewhere (no whitening: the group normalisation already scales it, as in veRL's GRPO).
    ``scale_by_std=False``: Dr. GRPO's o_i - mean_g (Liu et al. 2025, arXiv 2503.20783: dividing by the
    group's std weights groups that are nearly all right or all wrong up).
    """
    adv = grpo_outcome(outcome_scores, group_size, eps=eps, scale_by_std=scale_by_std)
    return torch.where(_valid(mask), adv[:, None], _zero(adv))


def spro_advantages(outcome_scores: torch.Tensor, token_rewards: torch.Tensor, mask: torch.Tensor,
                    group_size: int, *, outcome_coef: float = 1.0, process_coef: float = 1.0) -> torch.Tensor:
    """SPRO, self-guided process rewards (arXiv 2507.01551): the policy is its own implicit PRM.

    Shapes: ``outcome_scores`` [N], ``token_rewards`` [N, T] (beta * log(pi_theta / pi_ref) of each token,
    under the policy that sampled them), ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: CPR_{i,t} = sum_{s<=t} token_rewards_{i,s}; MSA_{i,t} = CPR_{i,t} - mean over the responses j of
    the group still running at t of CPR_{j,t} (:func:`~prm_rl.core.credit.masked_step_advantage`);
    A_{i,t} = outcome_coef * grpo_outcome(o)_i + process_coef * MSA_{i,t}. No whitening, no discount.
    """
    valid = _valid(mask)
    rewards = torch.where(valid, _float(token_rewards), _zero(_float(token_rewards)))
    msa = masked_step_advantage(rewards.cumsum(dim=-1), mask, group_size)
    adv = outcome_coef * grpo_outcome(outcome_scores, group_size)[:, None] + process_coef * msa
    return torch.where(valid, adv, _zero(adv))


def tree_advantages(outcome_scores: torch.Tensor, tree_credit: torch.Tensor, mask: torch.Tensor, group_size: int,
                    *, outcome_coef: float = 1.0, outcome_gamma: float = 1.0, whiten: bool = True) -> torch.Tensor:
    """Outcome RLOO plus the group's prefix-tree credit (TEMPO / prefix-to-tree, arXiv 2509.18314).

    Shapes: ``outcome_scores`` [N], ``tree_credit`` [N, T] (:func:`~prm_rl.core.tree.tree_credit`: each token
    carries V(its segment's node) - V(the node before), 0 where the whole group shares the segment),
    ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: A = whiten(outcome_coef * discounted_returns(place_on_last_token(rloo_outcome(o)), outcome_gamma)
    + tree_credit), the credit scaled by the caller (``algorithm.tree_coef``). It is already an advantage (a
    value difference), so it is neither baselined nor summed into returns again.
    """
    outcome = place_on_last_token(rloo_outcome(outcome_scores, group_size), mask)
    returns = outcome_coef * discounted_returns(outcome, mask, outcome_gamma)
    returns = returns + torch.where(_valid(mask), _float(tree_credit), _zero(returns))
    return masked_whiten(returns, mask) if whiten else returns


def reinforce_pp_advantages(outcome_scores: torch.Tensor, kl_rewards: torch.Tensor | None, mask: torch.Tensor,
                            group_size: int, *, baseline: bool = False, outcome_coef: float = 1.0, gamma: float = 1.0,
                            whiten: bool = True) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025, arXiv 2501.03262): no critic, the KL penalty in the reward, token returns
    normalised over the global batch.

    Shapes: ``outcome_scores`` [N], ``kl_rewards`` [N, T] or None (:func:`~prm_rl.core.kl_rewards`: -coef * KL per
    token), ``mask`` [N, T] -> [N, T], 0 on invalid positions.
    Formula: R_{i,t} = outcome_coef * o'_i on the last token + kl_{i,t}; G_{i,t} = sum_{s>=t} gamma^(s-t) R_{i,s};
    A = masked_whiten(G) (``whiten``). o' = o: REINFORCE++, no baseline at all; ``baseline``: o' = o - mean of its
    group, REINFORCE++-baseline as the authors' OpenRLHF computes it (``reinforce_baseline``: the group mean
    subtracted from the outcome before the KL rewards join it; veRL's ``reinforce_plus_plus_baseline`` instead sums
    the KL into the score first and centres that). OpenRLHF normalises with the biased variance; this the unbiased
    one (as every whitening here), a factor sqrt(n / (n - 1)) over n valid tokens.
    """
    o = _float(outcome_scores)
    if baseline:
        grouped = _as_groups(o, group_size, min_size=2, what="reinforce++-baseline")
        o = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    rewards = outcome_coef * place_on_last_token(o, mask)
    if kl_rewards is not None:
        rewards = rewards + torch.where(_valid(mask), _float(kl_rewards), _zero(rewards))
    returns = discounted_returns(rewards, mask, gamma)
    return masked_whiten(returns, mask) if whiten else returns


# ----------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class AdvantageEstimator:
    """``fn(scores [N], process_rewards [N, T] | None, mask [N, T], group_size, *, outcome_coef,
    process_coef, process_gamma, outcome_gamma, whiten, tree_credit) -> advantages [N, T]``.

    ``uses_prm``: the trainer builds and trains a PRM and passes its dense rewards (None otherwise);
    ``self_guided``: no PRM, the trainer passes the policy's own beta * log(pi_theta / pi_ref) per token (SPRO);
    ``uses_tree``: the trainer passes ``tree_credit`` [N, T], the group's prefix-tree credit already scaled by
    ``algorithm.tree_coef`` (None otherwise);
    ``checked_steps``: no PRM, the trainer passes the task's own step checker's verdict as process rewards
    (:func:`prm_rl.core.step_correctness_rewards`): an oracle control;
    ``token_kl``: no PRM, the trainer passes the per-token KL reward (``reward.kl_coef``; None when 0) as process
    rewards, for token returns; every other estimator reads that reward summed into each response's score.
    """

    fn: Callable[..., torch.Tensor]
    uses_prm: bool
    self_guided: bool = False
    uses_tree: bool = False
    checked_steps: bool = False
    token_kl: bool = False


# ``algorithm.advantage`` names a key here; the config's allowed values are these keys.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str, *, uses_prm: bool, self_guided: bool = False, uses_tree: bool = False,
                       checked_steps: bool = False, token_kl: bool = False):
    """Decorator: make ``fn`` selectable as ``algorithm.advantage=name`` (docs/contributing.md)."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(fn, uses_prm, self_guided, uses_tree, checked_steps, token_kl)
        return fn

    return add


@register_advantage("prime", uses_prm=True)
def _prime(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
           whiten, tree_credit):
    """PRIME: outcome RLOO plus the PRM's dense rewards under their own RLOO baseline."""
    return prime_advantages(scores, process_rewards, mask, group_size, outcome_coef=outcome_coef,
                            process_coef=process_coef, process_gamma=process_gamma, outcome_gamma=outcome_gamma,
                            whiten=whiten)[0]


@register_advantage("rloo", uses_prm=False)
def _rloo(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
           whiten, tree_credit):
    """Outcome-only RLOO: PRIME's estimator without process rewards (the ablation baseline)."""
    return prime_advantages(scores, None, mask, group_size, outcome_coef=outcome_coef,
                            outcome_gamma=outcome_gamma, whiten=whiten)[0]


@register_advantage("grpo", uses_prm=False)
def _grpo(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
           whiten, tree_credit):
    """GRPO: the group-normalised outcome on every token (the coefficients, gammas and whitening do not apply)."""
    return grpo_advantages(scores, mask, group_size)


@register_advantage("dr-grpo", uses_prm=False)
def _dr_grpo(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
             whiten, tree_credit):
    """Dr. GRPO: the group-centred outcome on every token, not divided by the group's std (pair it with
    policy.loss_agg=seq-mean-token-sum-norm, its length normalisation)."""
    return grpo_advantages(scores, mask, group_size, scale_by_std=False)


@register_advantage("spro", uses_prm=False, self_guided=True)
def _spro(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
          whiten, tree_credit):
    """SPRO: GRPO's outcome advantage plus the masked step advantage of the policy's own implicit rewards
    (two models: policy and reference; the gammas and whitening do not apply)."""
    return spro_advantages(scores, process_rewards, mask, group_size, outcome_coef=outcome_coef,
                           process_coef=process_coef)


@register_advantage("tree", uses_prm=False, uses_tree=True)
def _tree(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma, outcome_gamma,
          whiten, tree_credit):
    """Tree credit: outcome RLOO plus the group's prefix-tree step values (no PRM, no extra rollout)."""
    return tree_advantages(scores, tree_credit, mask, group_size, outcome_coef=outcome_coef,
                           outcome_gamma=outcome_gamma, whiten=whiten)


@register_advantage("prime-tree", uses_prm=True, uses_tree=True)
def _prime_tree(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                outcome_gamma, whiten, tree_credit):
    """PRIME plus tree credit: outcome RLOO, the PRM's dense rewards under their RLOO baseline, and the group's
    prefix-tree step values, summed before whitening."""
    returns = prime_advantages(scores, process_rewards, mask, group_size, outcome_coef=outcome_coef,
                               process_coef=process_coef, process_gamma=process_gamma, outcome_gamma=outcome_gamma,
                               whiten=False)[1]
    returns = returns + torch.where(_valid(mask), _float(tree_credit), _zero(returns))
    return masked_whiten(returns, mask) if whiten else returns


# --- oracle controls: the task's own step checker instead of a PRM (prm_rl.core.checked) -----------------------

@register_advantage("oracle-steps", uses_prm=False, checked_steps=True)
def _oracle_steps(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                  outcome_gamma, whiten, tree_credit):
    """PRIME's estimator with the checker's step correctness as the process rewards (+1 per right step, -1 on the
    first wrong one): signal even where every response of a group is wrong."""
    return prime_advantages(scores, process_rewards, mask, group_size, outcome_coef=outcome_coef,
                            process_coef=process_coef, process_gamma=process_gamma, outcome_gamma=outcome_gamma,
                            whiten=whiten)[0]


@register_advantage("oracle-from-error", uses_prm=False, checked_steps=True)
def _oracle_from_error(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                       outcome_gamma, whiten, tree_credit):
    """Outcome RLOO with a wrong response's advantage kept from its first wrong step to its end: its correct prefix
    is not blamed."""
    advantages = _rloo(scores, None, mask, group_size, outcome_coef=outcome_coef, process_coef=process_coef,
                       process_gamma=process_gamma, outcome_gamma=outcome_gamma, whiten=whiten, tree_credit=None)
    return first_error_credit(advantages, process_rewards, scores, mask, through_end=True)


@register_advantage("oracle-error-step", uses_prm=False, checked_steps=True)
def _oracle_error_step(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                       outcome_gamma, whiten, tree_credit):
    """Outcome RLOO with a wrong response's advantage on its first wrong step alone (neither the correct prefix
    nor what follows the error is blamed)."""
    advantages = _rloo(scores, None, mask, group_size, outcome_coef=outcome_coef, process_coef=process_coef,
                       process_gamma=process_gamma, outcome_gamma=outcome_gamma, whiten=whiten, tree_credit=None)
    return first_error_credit(advantages, process_rewards, scores, mask, through_end=False)


# --- REINFORCE++: no PRM, the KL penalty as a token reward ---------------------------------------------------

@register_advantage("reinforce++", uses_prm=False, token_kl=True)
def _reinforce_pp(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                  outcome_gamma, whiten, tree_credit):
    """REINFORCE++: token returns of the outcome and the per-token KL reward (process_rewards here), no baseline,
    whitened over the batch; discounted by outcome_gamma."""
    return reinforce_pp_advantages(scores, process_rewards, mask, group_size, outcome_coef=outcome_coef,
                                   gamma=outcome_gamma, whiten=whiten)


@register_advantage("reinforce++-baseline", uses_prm=False, token_kl=True)
def _reinforce_pp_baseline(scores, process_rewards, mask, group_size, *, outcome_coef, process_coef, process_gamma,
                           outcome_gamma, whiten, tree_credit):
    """REINFORCE++-baseline: REINFORCE++ with the outcome's group mean subtracted first."""
    return reinforce_pp_advantages(scores, process_rewards, mask, group_size, baseline=True,
                                   outcome_coef=outcome_coef, gamma=outcome_gamma, whiten=whiten)
