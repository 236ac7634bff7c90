"""The stages of one PRIME step, each a short function over the global step batch.

Data flow (PRIME, Cui et al. 2025, Algorithm 1): generate -> verify -> filter -> old log-probs ->
PRM update (and token log-ratios) -> process rewards -> advantages -> policy update. The math is in
``prm_rl.core``; this module only runs models over the right rows and hands tensors to it.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prm_rl import core
from prm_rl.config import (AlgorithmSection, BranchSection, FilterSection, PolicySection, PrmSection, RewardSection,
                           RolloutSection)
from prm_rl.data import arithmetic
from prm_rl.data.sample import Sample, encode_prompts
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import backward_and_step, grad_norm
from prm_rl.models.device import input_device
from prm_rl.models.forward import response_logprobs
from prm_rl.rollout.branch import fork_positions, grow_leaves, uniform_priority
from prm_rl.rollout.generate import Rollout, generate, left_pad
from prm_rl.rollout.prefix_cache import RootCaches, can_fork_from_cache, sample_forks
from prm_rl.trainer.sharding import micro_batches, split_minibatches


@dataclass
class Models:
    policy: object  # DeepSpeed engine
    prm: object | None  # DeepSpeed engine, None when no PRM is used
    ref: torch.nn.Module | None  # frozen reference, None when nothing needs it
    tokenizer: object
    synced_generation: bool  # ZeRO-3 over several ranks: every rank steps generate() until all finish
    offload_reference: bool = False  # ref lives in host memory: bring it over with engine.resident() to read it
    sampler: object | None = None  # rollout.engine=vllm: this rank's VllmSampler (None: the hf engine samples)


class Timings:
    """Wall seconds and memory per stage of one step (a stage may run in several rounds), logged as
    ``time/<stage>`` and ``mem/<stage>_gb``: on a GPU the peak memory allocated during the stage, on CPU the
    resident memory at its end (a peak within it cannot be read back); the largest over ranks, in GiB.
    Collective: every rank calls :meth:`metrics`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.time()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with torch.profiler.record_function(f"stage/{stage}"):  # the stage, named in any torch profile
            yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.time() - start
        self.memory[stage] = max(self.memory.get(stage, 0.0), _stage_memory_gb())

    def metrics(self) -> dict[str, float]:
        stages = sorted(self.memory)
        if not stages:
            return {}
        peaks = dist.all_reduce_max(torch.tensor([self.memory[s] for s in stages], dtype=torch.float64))
        return ({f"time/{stage}": s for stage, s in self.seconds.items()}
                | {f"mem/{stage}_gb": float(gb) for stage, gb in zip(stages, peaks.tolist())})


def _stage_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    with open("/proc/self/statm") as f:  # resident pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _sums_to_means(sums: dict[str, float], counts: dict[str, str | None]) -> dict[str, float]:
    """All-reduce metric sums over ranks, then divide each by the (also reduced) count it names (None: keep the sum)."""
    keys = sorted(sums)
    total = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
    reduced = dict(zip(keys, total.tolist()))
    return {k: reduced[k] / max(reduced[c], 1e-12) if c else reduced[k] for k, c in counts.items()}


# --- generate -------------------------------------------------------------------------------------

def generate_stage(policy: torch.nn.Module, tok, prompts: list[Sample], k: int, *, max_new_tokens: int,
                   temperature: float, top_p: float, synced_gpus: bool, sampler=None,
                   seed: int | None = None) -> Rollout:
    """K samples for each of this rank's prompts; returns the global rollout (groups contiguous).

    ``policy`` is the bare model (an engine's ``.module``); ``synced_gpus`` as in :func:`generate`.
    ``sampler``: a :class:`~prm_rl.rollout.vllm_engine.VllmSampler` holding the policy's weights samples instead
    of ``policy``, its draws a function of ``seed`` (this rank's) and the prompts; the rollout then carries its
    log-probs.
    """
    rows = [row for row in encode_prompts(tok, [s.prompt for s in prompts]) for _ in range(k)]
    return sample_rows(policy, tok, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       synced_gpus=synced_gpus, sampler=sampler, seed=seed)


def sample_rows(policy: torch.nn.Module, tok, rows: list[list[int]], *, max_new_tokens: int, temperature: float,
                top_p: float, synced_gpus: bool, sampler=None, seed: int | None = None) -> Rollout:
    """One sample per token row (the global list; each rank samples its even share); the global rollout."""
    # Every rank holds the whole global row list so all share one left-padded prompt width.
    prompt_ids, prompt_mask = left_pad(rows, tok.pad_token_id)
    per_rank = len(rows) // dist.world_size()
    mine = slice(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)
    sampling = dict(max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, do_sample=True,
                    temperature=temperature, top_p=top_p)
    if sampler is None:
        local = generate(policy, prompt_ids[mine], prompt_mask[mine], synced_gpus=synced_gpus, **sampling)
    else:
        local = sampler.rollout(rows[mine], seed=seed, **sampling)
    return gathered(prompt_ids, prompt_mask, local, tok.pad_token_id)


def gathered(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, local: Rollout, pad_id: int) -> Rollout:
    """The global rollout of the global prompt rows and every rank's ``local`` responses (in host memory)."""
    return Rollout(prompt_ids, prompt_mask,
                   dist.gather_rows(local.response_ids.cpu(), pad_id),
                   dist.gather_rows(local.response_mask.cpu(), 0),
                   dist.gather_rows(local.truncated.cpu()),
                   None if local.sampler_logp is None else dist.gather_rows(local.sampler_logp.cpu(), 0.0))


_CONTINUATION_SEED = 0x5BD1E995  # the vllm engine's continuations draw from another seed than its roots


def branched_generate_stage(policy: torch.nn.Module, tok, prompts: list[Sample], branch: BranchSection,
                            step_end_table: torch.Tensor, *, max_new_tokens: int, temperature: float, top_p: float,
                            synced_gpus: bool, micro_batch_size: int, max_tokens: int = 0, sampler=None,
                            seed: int | None = None) -> tuple[Rollout, torch.Tensor]:
    """K leaves per prompt from ``branch.roots`` root samples forked at their highest-entropy positions
    (:mod:`prm_rl.rollout.branch`); returns (the global rollout, groups of K contiguous; [N] tokens sampled
    for each leaf). Arguments as :func:`generate_stage`'s. On the hf decode loop the forks start from their
    roots' KV caches and the entropies come from the roots' own decode (:mod:`prm_rl.rollout.prefix_cache`);
    otherwise (vLLM, whose prefix cache does the same; ZeRO-3's synced generation) every fork is sampled from
    its whole prefix and the entropies come from ``policy``'s forward at the sampling temperature, in
    micro-batches of ``micro_batch_size`` rows (``max_tokens``: a token budget).
    """
    root_rows = [p for p in encode_prompts(tok, [s.prompt for s in prompts]) for _ in range(branch.roots)]
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    if sampler is None and can_fork_from_cache(policy, synced_gpus):
        return branch_from_cached_roots(policy, tok, root_rows, branch, step_end_table, **sampling)
    return branch_from_prefixes(policy, tok, root_rows, branch, step_end_table, synced_gpus=synced_gpus,
                                micro_batch_size=micro_batch_size, max_tokens=max_tokens, sampler=sampler, seed=seed,
                                **sampling)


def branch_from_prefixes(policy: torch.nn.Module, tok, root_rows: list[list[int]], branch: BranchSection,
                         step_end_table: torch.Tensor, *, max_new_tokens: int, temperature: float, top_p: float,
                         synced_gpus: bool, micro_batch_size: int, max_tokens: int = 0, sampler=None,
                         seed: int | None = None) -> tuple[Rollout, torch.Tensor]:
    """:func:`branched_generate_stage` from the root rows (token ids, each prompt ``branch.roots`` times), every
    fork sampled from its whole prefix."""
    sampling = dict(temperature=temperature, top_p=top_p, synced_gpus=synced_gpus, sampler=sampler)
    roots = sample_rows(policy, tok, root_rows, max_new_tokens=max_new_tokens, seed=seed, **sampling)
    if branch.by == "entropy":  # a forward over the roots (the cached path recorded it while sampling)
        priority = token_stats_stage(policy, roots, micro_batch_size, temperature, max_tokens, with_entropy=True)[1]
    else:
        priority = uniform_priority(roots.response_ids)
    positions = fork_positions(priority, roots.response_mask, step_end_mask(step_end_table, roots), branch.points,
                               branch.at)
    forks = [root_rows[r] + roots.response_ids[r, :t].tolist()
             for r in range(len(roots)) for t in positions[r].tolist() for _ in range(branch.ways - 1)]
    # one budget for every continuation (the longest any needs); each leaf is cut back to max_new_tokens
    continuations = sample_rows(policy, tok, forks, max_new_tokens=max_new_tokens - int(positions.min()),
                                seed=None if seed is None else seed ^ _CONTINUATION_SEED, **sampling)
    return grow_leaves(roots, positions, continuations, branch.ways, max_new_tokens, tok.eos_token_id,
                       tok.pad_token_id)


def branch_from_cached_roots(policy: torch.nn.Module, tok, root_rows: list[list[int]], branch: BranchSection,
                             step_end_table: torch.Tensor, *, max_new_tokens: int, temperature: float,
                             top_p: float) -> tuple[Rollout, torch.Tensor]:
    """:func:`branch_from_prefixes` on the hf decode loop, each rank forking its own roots from their caches."""
    prompt_ids, prompt_mask = left_pad(root_rows, tok.pad_token_id)
    per_rank = len(root_rows) // dist.world_size()
    mine = slice(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)
    sampling = dict(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=temperature, top_p=top_p)
    caches = RootCaches(per_rank, max_new_tokens, temperature)
    local = generate(policy, prompt_ids[mine], prompt_mask[mine], max_new_tokens=max_new_tokens, do_sample=True,
                     record=caches, **sampling)
    roots = gathered(prompt_ids, prompt_mask, local, tok.pad_token_id)
    entropy = dist.gather_rows(caches.entropy[:, :local.response_ids.shape[1]].cpu(), 0.0)
    priority = entropy if branch.by == "entropy" else uniform_priority(roots.response_ids)
    positions = fork_positions(priority, roots.response_mask, step_end_mask(step_end_table, roots), branch.points,
                               branch.at)
    forks_per_root = branch.points * (branch.ways - 1)
    on = input_device(policy)
    forks = sample_forks(policy, caches, prompt_ids[mine].to(on), prompt_mask[mine].to(on),
                         local.response_ids.to(on), torch.arange(per_rank, device=on).repeat_interleave(forks_per_root),
                         positions[mine].repeat_interleave(branch.ways - 1, dim=1).reshape(-1),
                         max_new_tokens=max_new_tokens - int(positions.min()), **sampling)
    fork_prompts = [x.repeat_interleave(forks_per_root, dim=0) for x in (prompt_ids, prompt_mask)]
    continuations = gathered(*fork_prompts, forks, tok.pad_token_id)
    return grow_leaves(roots, positions, continuations, branch.ways, max_new_tokens, tok.eos_token_id,
                       tok.pad_token_id)


# --- verify ---------------------------------------------------------------------------------------

def decode_responses(tokenizer, rollout: Rollout, rows: range) -> list[str]:
    return [tokenizer.decode(rollout.response_ids[i][rollout.response_mask[i].bool()], skip_special_tokens=True)
            for i in rows]


def verify_stage(scorer, tokenizer, rollout: Rollout, prompts: list[Sample], k: int) -> tuple[torch.Tensor, int]:
    """Outcome score of every response (each rank scores its own rows); returns (scores [N], failures)."""
    per_rank = len(rollout) // dist.world_size()
    rows = range(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)
    result = scorer.score([prompts[i // k] for i in rows], decode_responses(tokenizer, rollout, rows))
    local = torch.tensor(result.scores, dtype=torch.float32)
    failures = dist.all_reduce_sum(torch.tensor([sum(f is not None for f in result.failures)]))
    return dist.gather_rows(local), int(failures.item())


# --- filter ---------------------------------------------------------------------------------------

def filter_stage(scores: torch.Tensor, truncated: torch.Tensor, k: int, f: FilterSection,
                 r: RewardSection) -> torch.Tensor:
    """Row indices of the groups that pass the accuracy band (and, optionally, have no truncated response). The band
    reads the scores' [0, 1] labels (``reward.outcome_labels``)."""
    keep = torch.ones(scores.numel() // k, dtype=torch.bool)
    if f.enabled:
        keep &= core.accuracy_band(core.outcome_labels(scores, r.outcome_labels, r.label_threshold), k, f.low, f.high)
        if f.drop_truncated:
            keep &= core.groups_without_truncation(truncated, k)
    return core.expand_group_mask(keep, k).nonzero().squeeze(1)


# --- log-probs under a frozen or not-yet-updated model ---------------------------------------------

def row_lengths(batch: Rollout) -> torch.Tensor:
    """[N] prompt + response tokens of each row: what a token budget of micro-batches counts."""
    return batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)


def logprob_stage(model, batch: Rollout, micro_batch_size: int, temperature: float = 1.0,
                  max_tokens: int = 0) -> torch.Tensor:
    """Response-token log-probs ``[N, T]`` of every row, each rank computing the rows it owns."""
    return token_stats_stage(model, batch, micro_batch_size, temperature, max_tokens)[0]


@torch.no_grad()
def token_stats_stage(model, batch: Rollout, micro_batch_size: int, temperature: float = 1.0, max_tokens: int = 0,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Response-token log-probs ``[N, T]`` of every row (and the entropies of the distributions they were drawn
    from ``[N, T]``), each rank computing the rows it owns."""
    logp_out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
    entropy_out = torch.zeros(batch.response_ids.shape, dtype=torch.float32) if with_entropy else None
    for mb in micro_batches(torch.arange(len(batch)), micro_batch_size, lengths=row_lengths(batch),
                            max_tokens=max_tokens):
        logp, entropy = response_logprobs(model, batch.select(mb.rows), temperature, with_entropy=with_entropy)
        if mb.weight:
            logp_out[mb.rows] = logp.float().cpu()
            if with_entropy:
                entropy_out[mb.rows] = entropy.float().cpu()
    return dist.combine_rows(logp_out), None if entropy_out is None else dist.combine_rows(entropy_out)


# --- PRM update -----------------------------------------------------------------------------------

def prm_update_stage(prm, batch: Rollout, scores: torch.Tensor, ref_logp: torch.Tensor, k: int, p: PrmSection,
                     step_ends: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float], float]:
    """Train the implicit PRM on outcome labels; returns the log-ratios of its forward passes, metrics and the
    number of optimiser updates skipped for NaN/inf.

    ``step_ends`` [V] (:func:`step_end_table`): where the prefix loss judges a prefix; with ``prm.targets=tree``
    each such prefix learns its value in the group's prefix tree, computed here once for the whole batch.
    ``prm.epochs`` passes, each splitting the batch by group into ``prm.mini_batches`` optimiser steps.
    The returned log-ratios, and the logged loss, are those of each row's first forward pass, before the
    PRM was updated on that row: the single-forward (``after``) mode of the authors' code uses them
    directly as rewards, and the loss is measured on data the PRM has not yet trained on.
    """
    mask = batch.response_mask
    prm_loss = core.PRM_LOSSES[p.loss]
    prefix_ends = prefix_targets = None
    if prm_loss.per_prefix:
        prefix_ends = core.segment_ends(mask, step_end_mask(step_ends, batch), "step")
        if p.targets == "tree":
            prefix_targets = core.prefix_values(batch.response_ids, mask, scores, k)
    log_ratio = torch.zeros(mask.shape, dtype=torch.float32)
    on = input_device(prm)  # each micro-batch goes there once; the returned log-ratios come back to host memory
    sums = {"loss": 0.0, "steps": 0.0, "grad_norm": 0.0, "skipped_updates": 0.0}
    parts = [(epoch, part) for epoch in range(p.epochs)
             for part in split_minibatches(torch.randperm(len(batch) // k, generator=generator), p.mini_batches)]
    for epoch, part in parts:
        rows = (part[:, None] * k + torch.arange(k)).reshape(-1)
        denom = float(max(1, prm_loss.terms(scores[rows], k)))  # the loss is a mean over the whole mini-batch
        for mb in micro_batches(rows, p.micro_batch_size, group_size=k, lengths=row_lengths(batch),
                                max_tokens=p.micro_batch_tokens):
            sub = batch.select(mb.rows).to(on)
            logp, _ = response_logprobs(prm, sub)
            lr = core.implicit_log_ratio(logp, ref_logp[mb.rows].to(on), sub.response_mask)
            inputs = core.PrmLossInputs(
                lr, sub.response_mask, scores[mb.rows].to(on), k, p.beta, margin=p.margin,
                prefix_ends=None if prefix_ends is None else prefix_ends[mb.rows].to(on),
                prefix_targets=None if prefix_targets is None else prefix_targets[mb.rows].to(on))
            loss = prm_loss.summed(inputs) / denom
            if not backward_and_step(prm, loss * mb.weight * dist.world_size(), mb.is_last):
                sums["skipped_updates"] += 1.0 / dist.world_size()  # every rank agrees: count it once
            if mb.weight and epoch == 0:
                log_ratio[mb.rows] = lr.detach().float().cpu()
                sums["loss"] += loss.item()
        if epoch == 0:  # every rank sees the same step count and global grad norm: pre-divide by the ranks
            sums["steps"] += 1.0 / dist.world_size()
            sums["grad_norm"] += grad_norm(prm) / dist.world_size()
    log_ratio = dist.combine_rows(log_ratio)
    metrics = _sums_to_means(sums, {"loss": "steps", "grad_norm": "steps", "skipped_updates": None})
    return log_ratio, {f"prm/{k_}": v for k_, v in metrics.items()}, metrics["skipped_updates"]


@torch.no_grad()
def implicit_log_ratio_stage(prm, batch: Rollout, ref_logp: torch.Tensor, micro_batch_size: int,
                             max_tokens: int = 0) -> torch.Tensor:
    """Token log-ratios ``log pi_phi - log pi_ref`` ``[N, T]`` under the PRM as it is now."""
    prm_logp = logprob_stage(prm, batch, micro_batch_size, max_tokens=max_tokens)
    return core.implicit_log_ratio(prm_logp, ref_logp, batch.response_mask)


# --- rewards and advantages -------------------------------------------------------------------------

def step_end_table(tokenizer, delimiter: str) -> torch.Tensor:
    """``[V]`` bool: token ids whose text contains the step delimiter (they close a step)."""
    vocab = len(tokenizer)
    return torch.tensor([delimiter in tokenizer.decode([i]) for i in range(vocab)], dtype=torch.bool)


def closes_step(step_end_table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Bool of ``ids``' shape: the tokens that close a step, by :func:`step_end_table`. Ids past the tokenizer's
    vocabulary (a model's embedding may have more rows, as Qwen's does, and can sample them) close none."""
    size = step_end_table.numel()
    return step_end_table[ids.clamp(max=size - 1)] & (ids < size)


def step_end_mask(step_end_table: torch.Tensor, batch: Rollout) -> torch.Tensor:
    """``[N, T]`` bool: the response tokens that close a step."""
    return closes_step(step_end_table, batch.response_ids) & batch.response_mask.bool()


def process_reward_stage(log_ratio: torch.Tensor, batch: Rollout, step_ends: torch.Tensor, r: RewardSection,
                         beta: float) -> torch.Tensor:
    """Dense rewards ``[N, T]`` from the token log-ratios, per ``reward.*`` (``beta``: ``prm.beta``)."""
    mask = batch.response_mask
    rewards = core.process_rewards(log_ratio, mask, beta, scale_by_beta=r.scale_by_beta,
                                   granularity=r.granularity, step_end=step_end_mask(step_ends, batch),
                                   reward_eos=r.reward_eos)
    if r.normalize == "batch_max_return":
        rewards = core.normalize_by_max_return(rewards, mask)
    if r.credit != "sum":  # after normalising: softmin's temperature reads rewards on that scale
        carriers = core.reward_carriers(mask, r.granularity, step_end_mask(step_ends, batch), r.reward_eos)
        rewards = core.credit_rewards(rewards, carriers, r.credit, r.softmin_temperature)
    return rewards


def checked_step_rewards_stage(tokenizer, batch: Rollout, step_ends: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` the built-in arithmetic task's step checker as process rewards
    (:func:`prm_rl.core.step_correctness_rewards`): an oracle control, read off the decoded prompt and response of
    every row (global batch: every rank computes the same). A row the checker cannot read gets none."""
    mask = batch.response_mask
    first_wrong = []
    for i in range(len(batch)):
        prompt = tokenizer.decode(batch.prompt_ids[i][batch.prompt_mask[i].bool()], skip_special_tokens=True)
        response = tokenizer.decode(batch.response_ids[i][mask[i].bool()], skip_special_tokens=True)
        try:
            first_wrong.append(arithmetic.first_wrong_step(prompt, response) or 0)
        except ValueError:  # not a built-in chain: no verdict
            first_wrong.append(-1)
    first_wrong = torch.tensor(first_wrong, dtype=torch.long)
    ends = core.segment_ends(mask, step_end_mask(step_ends, batch), "step")
    rewards = core.step_correctness_rewards(ends, first_wrong.clamp(min=0))
    return torch.where((first_wrong >= 0)[:, None], rewards, torch.zeros_like(rewards))


def tree_credit_stage(batch: Rollout, scores: torch.Tensor, step_ends: torch.Tensor, k: int,
                      a: AlgorithmSection) -> torch.Tensor:
    """``[N, T]`` the group's prefix-tree credit of every token, times ``algorithm.tree_coef`` (global batch: each
    group is whole, so every rank computes the same values)."""
    mask = batch.response_mask
    ends = core.segment_ends(mask, step_end_mask(step_ends, batch), a.tree_split)
    return a.tree_coef * core.tree_credit(batch.response_ids, mask, scores, k, ends)


def outcome_shaping_stage(scores: torch.Tensor, batch: Rollout, old_logp: torch.Tensor | None,
                          ref_logp: torch.Tensor | None, r: RewardSection,
                          max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
    """``(outcome [N], kl_rewards [N, T] | None, metrics)``: the scores plus DAPO's overlong penalty
    (``reward.overlong_buffer``; :func:`prm_rl.core.overlong_penalty`), and the per-token KL reward of the policy
    that sampled against the reference (``reward.kl_coef``; :func:`prm_rl.core.kl_rewards`), which
    :func:`with_kl_rewards` hands to the estimator. ``reward/*`` metrics: each term's mean over responses."""
    mask, metrics, kl = batch.response_mask, {}, None
    if r.overlong_buffer:
        penalty = core.overlong_penalty(mask.sum(dim=1), max_new_tokens, r.overlong_buffer, r.overlong_penalty)
        scores = scores + penalty
        metrics["reward/overlong_penalty_mean"] = float(penalty.mean())
    if r.kl_coef:
        kl = core.kl_rewards(old_logp, ref_logp, mask, r.kl_coef, r.kl_estimator)
        metrics["reward/kl_penalty_mean"] = float(kl.sum(dim=1).mean())
    return scores, kl, metrics


def with_kl_rewards(scores: torch.Tensor, process_rewards: torch.Tensor | None, mask: torch.Tensor,
                    kl_rewards: torch.Tensor | None, a: AlgorithmSection) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(scores [N], process_rewards [N, T] | None)`` as the estimator takes them with the per-token KL reward
    ``kl_rewards`` (``reward.kl_coef``; None: off): REINFORCE++'s estimators (``token_kl``) take it per token in
    place of process rewards; every other one reads each response's sum of it added to its score."""
    if a.token_kl:
        return scores, kl_rewards
    if kl_rewards is None:
        return scores, process_rewards
    return scores + core.masked_sum(kl_rewards, mask, dim=-1), process_rewards


def advantage_stage(scores: torch.Tensor, process_rewards: torch.Tensor | None, mask: torch.Tensor, k: int,
                    a: AlgorithmSection, r: RewardSection, tree_credit: torch.Tensor | None = None,
                    kl_rewards: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, T]`` advantages from the estimator registered as ``algorithm.advantage`` (``tree_credit``: from
    :func:`tree_credit_stage` when the estimator uses it; ``kl_rewards``: see :func:`with_kl_rewards`)."""
    estimator = core.ADVANTAGE_ESTIMATORS[a.advantage]
    scores, process_rewards = with_kl_rewards(scores, process_rewards, mask, kl_rewards, a)
    return estimator.fn(scores, process_rewards, mask, k, outcome_coef=r.outcome_coef,
                        process_coef=r.process_coef, process_gamma=a.process_gamma,
                        outcome_gamma=a.outcome_gamma, whiten=a.whiten, tree_credit=tree_credit)


def advantage_parts(scores: torch.Tensor, process_rewards: torch.Tensor | None, mask: torch.Tensor, k: int,
                    a: AlgorithmSection, r: RewardSection, tree_credit: torch.Tensor | None = None,
                    kl_rewards: torch.Tensor | None = None) -> dict[str, float]:
    """How the dense parts move the advantages: the spread over valid tokens of the outcome part, of the process
    part and of the tree part of the estimator's unwhitened value (they add up to it), and each dense part's
    correlation with the outcome part. A dense part much wider than the outcome part and uncorrelated with it adds
    noise, not credit. A KL reward summed into the scores counts in the outcome part."""
    estimator = core.ADVANTAGE_ESTIMATORS[a.advantage]
    scores, process_rewards = with_kl_rewards(scores, process_rewards, mask, kl_rewards, a)
    common = dict(process_gamma=a.process_gamma, outcome_gamma=a.outcome_gamma, whiten=False)
    no_tree = None if tree_credit is None else torch.zeros_like(tree_credit)

    def part(outcome_coef: float, process_coef: float, tree: torch.Tensor | None) -> torch.Tensor:
        value = estimator.fn(scores, process_rewards, mask, k, outcome_coef=outcome_coef, process_coef=process_coef,
                             tree_credit=tree, **common)
        return value[mask.bool()].double()

    o = part(r.outcome_coef, 0.0, no_tree)
    out = {"adv/outcome_std": float(o.std())}
    if process_rewards is not None:
        p = part(0.0, r.process_coef, no_tree)
        out |= {"adv/process_std": float(p.std()), "adv/process_outcome_corr": core.correlation(p, o)}
    if tree_credit is not None:
        t = part(0.0, 0.0, tree_credit)
        out |= {"adv/tree_std": float(t.std()), "adv/tree_outcome_corr": core.correlation(t, o)}
    return out


# --- policy update --------------------------------------------------------------------------------

def policy_update_stage(policy, batch: Rollout, old_logp: torch.Tensor | None, advantages: torch.Tensor,
                        ref_logp: torch.Tensor | None, pc: PolicySection, r: RolloutSection,
                        generator: torch.Generator) -> tuple[dict[str, float], float]:
    """PPO-clip epochs over shuffled mini-batches of sequences; returns globally averaged metrics and the
    number of optimiser updates skipped for NaN/inf.

    ``r.temperature``: the sampling temperature, so log-probs match the sampler's. When another engine sampled
    (``batch.sampler_logp``), every token's loss is weighted per ``r.is_correction`` by pi_old / pi_sampler, and
    ``rollout/*`` reports that mismatch over the first epoch's tokens (those of the rows that ran).
    ``old_logp=None``: an on-policy update (one epoch, one mini-batch), pi_old = the forward's own detached
    log-probs, which is the value a separate pass before the update would give.
    ``policy.skip_zero_advantage``: rows with no gradient are not run, so clip_frac, approx_kl and entropy
    average over the rows that ran; ``policy/zero_advantage_frac`` is the share left out.
    """
    if old_logp is None and (pc.ppo_epochs != 1 or pc.mini_batches != 1):
        raise ValueError("old_logp may be omitted only for an on-policy update (one epoch, one mini-batch)")
    mask = batch.response_mask
    sums = {k: 0.0 for k in ("loss", "steps", "grad_norm", "clip_frac", "approx_kl", "entropy", "tokens",
                             "skipped_updates")}
    mismatch = {k: 0.0 for k in ("logprob_diff", "is_excess", "is_excess_sq", "is_outside_band", "tokens")}
    # Rows without a gradient are left out of the forwards; the denominators still count them. Every rank
    # holds the same advantages, so all agree on the rows and run the same number of micro-batches.
    skip = pc.skip_zero_advantage and not pc.entropy_coef and not pc.kl_coef
    live = core.rows_with_gradient(advantages, mask).cpu() if skip else torch.ones(len(batch), dtype=torch.bool)
    on = input_device(policy)  # each micro-batch, with its advantages and old/reference log-probs, goes there once
    for epoch in range(pc.ppo_epochs):
        for part in split_minibatches(torch.randperm(len(batch), generator=generator), pc.mini_batches):
            denom = {"seq-mean-token-mean": float(part.numel()), "token-mean": float(mask[part].sum()),
                     "seq-mean-token-sum-norm": float(part.numel()) * r.max_new_tokens}[pc.loss_agg]
            running = part[live[part]] if live[part].any() else part[:1]  # a zero-gradient row keeps the step
            for mb in micro_batches(running, pc.micro_batch_size, lengths=row_lengths(batch),
                                    max_tokens=pc.micro_batch_tokens):
                sub = batch.select(mb.rows).to(on)
                m = sub.response_mask
                logp, entropy = response_logprobs(policy, sub, r.temperature, with_entropy=True,
                                                  entropy_grad=pc.entropy_coef != 0)
                adv = advantages[mb.rows].to(on)
                old = logp.detach() if old_logp is None else old_logp[mb.rows].to(on)
                token_loss, clipped = core.ppo_clip_loss(logp, old, adv, m, pc.clip_eps, pc.dual_clip,
                                                         pc.clip_eps_high, pc.ratio_level)
                if sub.sampler_logp is not None:
                    sampled = sub.sampler_logp
                    ratio = core.sampler_ratio(old, sampled)
                    token_loss = token_loss * core.sampler_correction(ratio, r.is_correction, r.is_cap)
                    if epoch == 0 and mb.weight:
                        _add_mismatch(mismatch, old, sampled, ratio, m, r.is_cap)
                loss = core.aggregate(token_loss, m, pc.loss_agg, denom)
                if pc.entropy_coef:
                    loss = loss - pc.entropy_coef * core.aggregate(entropy, m, pc.loss_agg, denom)
                if pc.kl_coef:
                    kl = core.kl_penalty(logp, ref_logp[mb.rows].to(on), pc.kl_estimator)
                    loss = loss + pc.kl_coef * core.aggregate(kl, m, pc.loss_agg, denom)
                if not backward_and_step(policy, loss * mb.weight * dist.world_size(), mb.is_last):
                    sums["skipped_updates"] += 1.0 / dist.world_size()
                if mb.weight:
                    with torch.no_grad():
                        sums["loss"] += loss.item()
                        sums["clip_frac"] += core.masked_sum(clipped.float(), m).item()
                        sums["approx_kl"] += core.masked_sum(core.approx_kl(logp, old), m).item()
                        sums["entropy"] += core.masked_sum(entropy.detach(), m).item()
                        sums["tokens"] += float(m.sum())
            sums["steps"] += 1.0 / dist.world_size()
            sums["grad_norm"] += grad_norm(policy) / dist.world_size()
    per_token = {k: "tokens" for k in ("clip_frac", "approx_kl", "entropy")}
    metrics = _sums_to_means(sums, {"loss": "steps", "grad_norm": "steps", "skipped_updates": None, **per_token})
    metrics["zero_advantage_frac"] = 1.0 - float(live.float().mean())
    out = {f"policy/{k}": v for k, v in metrics.items()}
    if batch.sampler_logp is not None:
        out |= _mismatch_metrics(mismatch)
    return out, metrics["skipped_updates"]


def _add_mismatch(sums: dict[str, float], old: torch.Tensor, sampled: torch.Tensor, ratio: torch.Tensor,
                  mask: torch.Tensor, cap: float) -> None:
    """Accumulate the sampler/trainer mismatch of one micro-batch's valid tokens into ``sums``."""
    with torch.no_grad():
        outside = (ratio > cap) | (ratio < 1.0 / cap)
        sums["logprob_diff"] += core.masked_sum((old - sampled).abs(), mask).item()
        excess = ratio - 1.0  # moments of r - 1: those of r lose its spread (~1e-6 in float32) to rounding
        sums["is_excess"] += core.masked_sum(excess, mask).item()
        sums["is_excess_sq"] += core.masked_sum(excess ** 2, mask).item()
        sums["is_outside_band"] += core.masked_sum(outside.float(), mask).item()
        sums["tokens"] += float(mask.sum())


def _mismatch_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``rollout/logprob_diff`` (mean |log pi_old - log pi_sampler| per token) and the importance ratio's
    mean, standard deviation and share of tokens outside [1/cap, cap], over all ranks."""
    means = _sums_to_means(sums, {k: "tokens" for k in sums if k != "tokens"})
    spread = max(means["is_excess_sq"] - means["is_excess"] ** 2, 0.0) ** 0.5
    return {"rollout/logprob_diff": means["logprob_diff"], "rollout/is_ratio_mean": 1.0 + means["is_excess"],
            "rollout/is_ratio_std": spread, "rollout/is_outside_band_frac": means["is_outside_band"]}
