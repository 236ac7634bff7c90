"""Pure-tensor math of PRIME: masked statistics, implicit process rewards, advantages, losses, filters.

Tensors and plain scalars in, tensors out; no I/O, no distributed calls, no config objects. Callers pass
the global batch (gathered over ranks) wherever a statistic is taken, and global denominators to
:func:`aggregate`.
"""
from .advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    discounted_returns,
    grpo_advantages,
    grpo_outcome,
    place_on_last_token,
    prime_advantages,
    register_advantage,
    rloo_outcome,
    rloo_process,
    spro_advantages,
)
from .credit import CREDITS, credit_rewards, masked_step_advantage, reward_carriers
from .watch import correlation, repeated_ngram_fraction
from .filters import (
    accuracy_band,
    expand_group_mask,
    group_mean_scores,
    groups_without_truncation,
)
from .implicit import (
    GRANULARITIES,
    PRM_LOSSES,
    PrmLoss,
    dpo_pairs,
    implicit_log_ratio,
    normalize_by_max_return,
    pairwise_ranking_accuracy,
    prm_ce_loss,
    prm_dpo_loss,
    process_rewards,
    sequence_reward,
)
from .logprobs import token_entropy, token_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .policy_loss import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    aggregate,
    approx_kl,
    kl_penalty,
    ppo_clip_loss,
)
from .prm_metrics import (
    SCORE_AGGREGATIONS,
    auroc,
    constant_guess_ce,
    first_error_hit_rate,
    first_error_hits,
    monte_carlo_values,
    response_score,
    step_auroc,
    step_rewards,
    value_increments,
)
from .selection import best_of_n, bootstrap_interval, pass_at_k, vote

__all__ = [
    "correlation",
    "repeated_ngram_fraction",
    "CREDITS",
    "credit_rewards",
    "masked_step_advantage",
    "reward_carriers",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "token_logprobs",
    "token_entropy",
    "implicit_log_ratio",
    "sequence_reward",
    "prm_ce_loss",
    "dpo_pairs",
    "prm_dpo_loss",
    "pairwise_ranking_accuracy",
    "process_rewards",
    "normalize_by_max_return",
    "rloo_outcome",
    "rloo_process",
    "spro_advantages",
    "grpo_outcome",
    "place_on_last_token",
    "discounted_returns",
    "prime_advantages",
    "grpo_advantages",
    "ppo_clip_loss",
    "kl_penalty",
    "approx_kl",
    "aggregate",
    "group_mean_scores",
    "accuracy_band",
    "groups_without_truncation",
    "expand_group_mask",
    "auroc",
    "constant_guess_ce",
    "step_rewards",
    "step_auroc",
    "first_error_hits",
    "first_error_hit_rate",
    "monte_carlo_values",
    "value_increments",
    "ADVANTAGE_ESTIMATORS",
    "AdvantageEstimator",
    "register_advantage",
    "PRM_LOSSES",
    "PrmLoss",
    "SCORE_AGGREGATIONS",
    "pass_at_k",
    "best_of_n",
    "vote",
    "bootstrap_interval",
    "response_score",
    "GRANULARITIES",
    "LOSS_AGGREGATIONS",
    "KL_ESTIMATORS",
]
