"""The learning half of one PRIME step, as one function: a filtered batch with outcome scores in, updated
models and a typed result out.

Read :func:`learn` top to bottom against PRIME (Cui et al. 2025, Algorithm 1, lines 6-11): old log-probs
-> PRM update (on the scores' [0, 1] labels) and token log-ratios -> process rewards -> outcome shaping (overlong
and KL penalties) -> advantages -> PPO-clip policy update. The trainer
calls it every step after generate -> verify -> filter, and the exactness probe calls it on a fixed batch,
so every option the trainer has is the code the exactness test runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from prm_rl import core
from prm_rl.config import AlgorithmSection, PolicySection, PrmSection, RewardSection, RolloutSection
from prm_rl.engine.deepspeed_engine import resident
from prm_rl.rollout.generate import Rollout
from prm_rl.trainer import stages


@dataclass(frozen=True)
class LearnSections:
    """The config sections the learning stages read (nothing else of the config reaches them)."""

    rollout: RolloutSection
    prm: PrmSection
    reward: RewardSection
    algorithm: AlgorithmSection
    policy: PolicySection

    @classmethod
    def of(cls, cfg) -> "LearnSections":
        return cls(cfg.rollout, cfg.prm, cfg.reward, cfg.algorithm, cfg.policy)


@dataclass
class LearnResult:
    old_logp: torch.Tensor | None  # [N, T] the policy's log-probs before the update (PPO's pi_old); None when
    # the update is on-policy (one epoch, one mini-batch) and the update's own forward served as pi_old
    log_ratio: torch.Tensor | None  # [N, T] log pi_phi - log pi_ref the rewards came from; None without a PRM
    process_rewards: torch.Tensor | None  # [N, T] dense rewards; None without a PRM
    advantages: torch.Tensor  # [N, T]
    skipped_updates: float  # optimiser updates DeepSpeed skipped for NaN/inf (policy + PRM): the guard's input
    metrics: dict[str, float] = field(default_factory=dict)  # prm/*, policy/*, time/<stage>


def learn(models: stages.Models, batch: Rollout, scores: torch.Tensor, sections: LearnSections,
          step_ends: torch.Tensor, generator: torch.Generator,
          advantage_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LearnResult:
    """Update the PRM (when the estimator uses one) and the policy on ``batch``; every rank calls it.

    ``scores`` [N] outcome scores (groups of K contiguous; the PRM learns their ``reward.outcome_labels``, the
    estimator reads them shaped by ``reward.overlong_*`` and ``reward.kl_coef``); ``step_ends`` [V] from
    :func:`stages.step_end_table`; ``generator`` orders the mini-batches (same on every rank);
    ``advantage_hook`` lets tests alter the advantages (fault injection) before the policy update.
    """
    s, m = sections, models
    k = s.rollout.samples_per_prompt
    metrics: dict[str, float] = {}
    timer = stages.Timings()

    # One epoch in one mini-batch updates exactly on-policy: pi_old is the policy of the update's own forward,
    # so the PPO ratio is 1 and a separate old-log-prob pass would only repeat that forward (skipped, as TRL
    # does), unless the PRM reads the policy as its reference.
    on_policy = s.policy.ppo_epochs == 1 and s.policy.mini_batches == 1
    needs_old = (not on_policy or s.algorithm.self_guided or bool(s.reward.kl_coef)
                 or (s.algorithm.uses_prm and s.prm.reference == "policy"))
    with timer("old_logprobs"):
        size, tokens = s.policy.micro_batch_size, s.policy.micro_batch_tokens
        old_logp = stages.logprob_stage(m.policy, batch, size, s.rollout.temperature, tokens) if needs_old else None
        with resident(m.ref, m.offload_reference) as ref:
            ref_logp = stages.logprob_stage(ref, batch, size, max_tokens=tokens) if ref is not None else None

    log_ratio = process_rewards = None
    prm_skipped = 0.0
    if s.algorithm.uses_prm:
        prm_ref = ref_logp if s.prm.reference == "sft" else old_logp
        labels = core.outcome_labels(scores, s.reward.outcome_labels, s.reward.label_threshold)
        with timer("prm"):
            log_ratio, prm_skipped = _prm_log_ratios(m.prm, batch, labels, prm_ref, k, s.prm, step_ends, generator,
                                                     metrics)
            process_rewards = stages.process_reward_stage(log_ratio, batch, step_ends, s.reward, s.prm.beta)
    elif s.algorithm.self_guided:  # SPRO: the policy is its own implicit PRM, read before its update
        process_rewards = s.prm.beta * core.implicit_log_ratio(old_logp, ref_logp, batch.response_mask)
    elif s.algorithm.checked_steps:  # an oracle control: the task's own step checker instead of a PRM
        process_rewards = stages.checked_step_rewards_stage(m.tokenizer, batch, step_ends)

    with timer("advantages"):
        outcome, kl_rewards, shaping = stages.outcome_shaping_stage(scores, batch, old_logp, ref_logp, s.reward,
                                                                    s.rollout.max_new_tokens)
        metrics.update(shaping)
        tree = stages.tree_credit_stage(batch, outcome, step_ends, k, s.algorithm) if s.algorithm.uses_tree else None
        advantages = stages.advantage_stage(outcome, process_rewards, batch.response_mask, k, s.algorithm, s.reward,
                                            tree, kl_rewards)
        if advantage_hook is not None:
            advantages = advantage_hook(advantages)
        if process_rewards is not None or tree is not None:
            metrics.update(stages.advantage_parts(outcome, process_rewards, batch.response_mask, k, s.algorithm,
                                                  s.reward, tree, kl_rewards))
    with timer("policy"):
        policy_metrics, policy_skipped = stages.policy_update_stage(
            m.policy, batch, old_logp, advantages, ref_logp, s.policy, s.rollout, generator)
    metrics.update(policy_metrics)
    return LearnResult(old_logp, log_ratio, process_rewards, advantages, prm_skipped + policy_skipped,
                       metrics | timer.metrics())


def _prm_log_ratios(prm, batch: Rollout, labels: torch.Tensor, ref_logp: torch.Tensor, k: int, p: PrmSection,
                    step_ends: torch.Tensor, generator: torch.Generator,
                    metrics: dict[str, float]) -> tuple[torch.Tensor, float]:
    """Update the PRM per ``prm.update`` on the [0, 1] outcome ``labels`` [N]; returns the token log-ratios the
    rewards come from and the number of optimiser updates skipped for NaN/inf.

    ``after`` (the authors' default): one forward pass both trains and scores, so the rewards are the PRM's
    judgement before it saw these outcomes. ``before``: update first, then score again with the updated PRM.
    ``none``: a frozen PRM only scores.
    """
    skipped = 0.0
    if p.update == "none":
        log_ratio = stages.implicit_log_ratio_stage(prm, batch, ref_logp, p.micro_batch_size, p.micro_batch_tokens)
    else:
        log_ratio, prm_metrics, skipped = stages.prm_update_stage(prm, batch, labels, ref_logp, k, p, step_ends,
                                                                  generator)
        metrics.update(prm_metrics)
        if p.loss == "ce":  # prm/loss above this = worse than predicting the batch's mean outcome
            metrics["prm/loss_constant_guess"] = core.constant_guess_ce(labels)
        if p.update == "before":
            log_ratio = stages.implicit_log_ratio_stage(prm, batch, ref_logp, p.micro_batch_size, p.micro_batch_tokens)
    seq = core.sequence_reward(log_ratio, batch.response_mask, p.beta)
    # reward-hacking watch: the PRM's reward should rise with the verifier's score, not apart from it
    metrics["watch/prm_reward_mean"] = float(seq.mean())
    metrics["watch/prm_outcome_corr"] = core.correlation(seq, labels)
    correct, weight = core.pairwise_ranking_accuracy(seq, labels, k)
    if weight > 0:
        metrics["prm/ranking_acc"] = float(correct / weight)
    return log_ratio, skipped
