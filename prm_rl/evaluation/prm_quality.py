"""Held-out evaluation of an implicit PRM: does it tell right from wrong, and where a response goes wrong?

Sample K responses per held-out prompt from a policy, score them with the verifier, and read the PRM's
token log-ratios against its reference. Metrics (keys of :func:`prm_metrics`, documented in
docs/prm_eval.md): held-out CE beside the constant-guess CE, outcome AUROC, within-group ranking
accuracy, and, where every step can be checked (the built-in arithmetic task), step AUROC and the
first-error hit rate with their random baselines. Step labels are computed here only; training never
sees them. Collective: every rank calls these functions (ZeRO gathers parameters in every forward).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from prm_rl import core
from prm_rl.config import PrmEvalSection, RewardSection
from prm_rl.data import arithmetic
from prm_rl.data.sample import Sample
from prm_rl.engine import dist
from prm_rl.rollout.generate import Rollout
from prm_rl.trainer import stages
from prm_rl.tracking import heatmap
from prm_rl.tracking.heatmap import TokenHeatmap


@dataclass
class HeldoutGroups:
    """K responses to each held-out prompt with their verifier scores (global: the same on every rank)."""

    rollout: Rollout  # [N] rows, groups of K contiguous
    scores: torch.Tensor  # [N] outcome scores: a verifier's in [0, 1], a reward model's any real
    labels: torch.Tensor  # [N] their [0, 1] labels by reward.outcome_labels, what the PRM learns and is judged on
    samples: list[Sample]  # [N] the prompt of each row
    responses: list[str]  # [N] decoded responses
    k: int


def sample_heldout(policy: torch.nn.Module, tokenizer, prompts: list[Sample], scorer, settings: PrmEvalSection,
                   *, reward: RewardSection, max_new_tokens: int, synced_gpus: bool = False,
                   sampler=None) -> HeldoutGroups:
    """Sample ``settings.samples_per_prompt`` responses to each prompt with a fixed seed, scored, and labelled by
    the run's ``reward.outcome_labels`` and ``reward.label_threshold`` (:func:`prm_rl.core.outcome_labels`).

    The seed is fixed and the training random state is set aside meanwhile, so evaluating never changes
    the training run, and every evaluation of one policy sees the same responses. ``sampler``: a vLLM engine
    holding ``policy``'s weights samples instead (:func:`prm_rl.trainer.stages.generate_stage`).
    """
    k = settings.samples_per_prompt
    usable = len(prompts) - len(prompts) % dist.world_size()  # generate_stage splits rows evenly over ranks
    prompts = prompts[:usable]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        seed = settings.seed * 1000 + dist.rank()
        torch.manual_seed(seed)
        rollout = stages.generate_stage(policy, tokenizer, prompts, k, max_new_tokens=max_new_tokens,
                                        temperature=settings.temperature, top_p=1.0, synced_gpus=synced_gpus,
                                        sampler=sampler, seed=seed)
    scores, _ = stages.verify_stage(scorer, tokenizer, rollout, prompts, k)
    responses = stages.decode_responses(tokenizer, rollout, range(len(rollout)))
    labels = core.outcome_labels(scores, reward.outcome_labels, reward.label_threshold)
    return HeldoutGroups(rollout, scores, labels, [p for p in prompts for _ in range(k)], responses, k)


def first_wrong_steps(samples: list[Sample], responses: list[str]) -> torch.Tensor:
    """``[N]`` long: 1-based first wrong step of each response, 0 when every step is right, -1 when its
    steps cannot be checked. Only the built-in arithmetic task has checkable steps (one line each, see
    :func:`prm_rl.data.arithmetic.first_wrong_step`)."""
    out = []
    for sample, response in zip(samples, responses):
        if sample.task != arithmetic.TASK_NAME:
            out.append(-1)
            continue
        try:
            out.append(arithmetic.first_wrong_step(sample.prompt, response) or 0)
        except ValueError:  # a prompt of the arithmetic verifier that is not a built-in chain
            out.append(-1)
    return torch.tensor(out, dtype=torch.long)


def prm_metrics(log_ratio: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, k: int,
                beta: float, step_end: torch.Tensor, first_wrong: torch.Tensor) -> dict[str, float]:
    """Every PRM metric of one held-out batch (keys without the ``prm_eval/`` prefix).

    Shapes: ``log_ratio``, ``ids`` (response tokens), ``mask``, ``step_end`` [N, T]; ``labels`` (outcome labels in
    [0, 1], 1 = right), ``first_wrong`` [N]. Beside the PRM's step metrics, ``tree_*`` are the same metrics of the
    free estimate: the step values of the group's own prefix tree on the same samples (no model;
    :mod:`prm_rl.core.tree`).
    """
    seq = core.sequence_reward(log_ratio, mask, beta)
    correct, weight = core.pairwise_ranking_accuracy(seq, labels, k, tie_credit=0.5)
    out = {
        "accuracy": float(labels.mean()),
        "ce": float(core.prm_ce_loss(seq, labels).mean()),
        "ce_constant_guess": core.constant_guess_ce(labels),
        "outcome_auroc": core.auroc(seq, labels >= 1.0),
        "ranking_acc": float(correct / weight) if weight > 0 else float("nan"),
        "ranking_weight": float(weight),
    }
    checkable = first_wrong >= 0
    if checkable.any():
        rows = checkable.nonzero().squeeze(1)
        rewards, valid, _ = core.step_rewards(log_ratio[rows], mask[rows], step_end[rows], beta)
        hit, random_hit, n = core.first_error_hit_rate(rewards, valid, first_wrong[rows])
        out |= {"step_auroc": core.step_auroc(rewards, valid, first_wrong[rows]),
                "first_error_hit_rate": hit, "first_error_random": random_hit, "first_error_n": float(n)}
        tree = tree_step_values(ids, mask, labels, k, step_end)
        tree_rewards, tree_valid, _ = core.step_rewards(tree[rows], mask[rows], step_end[rows], 1.0)
        out |= {"tree_step_auroc": core.step_auroc(tree_rewards, tree_valid, first_wrong[rows]),
                "tree_first_error_hit_rate": core.first_error_hit_rate(tree_rewards, tree_valid, first_wrong[rows])[0]}
    return out


def tree_step_values(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, k: int,
                     step_end: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` each step's prefix-tree credit V(node) - V(parent) on its last token, 0 elsewhere: a step reward
    tensor that :func:`prm_rl.core.step_rewards` (beta 1) reads like the PRM's log-ratios."""
    ends = core.segment_ends(mask, step_end, "step")
    return torch.where(ends, core.tree_credit(ids, mask, labels, k, ends), torch.zeros(()))


def first_error_by_operation(groups: HeldoutGroups, log_ratio: torch.Tensor, step_end_table: torch.Tensor,
                             beta: float) -> dict[str, dict[str, float]]:
    """Arithmetic only: the first-error hit rate split by what the first wrong step does (``+``, ``-``,
    ``*``, or ``answer``: the boxed line), with the count and random baseline of each."""
    first_wrong = first_wrong_steps(groups.samples, groups.responses)
    mask = groups.rollout.response_mask
    rewards, valid, _ = core.step_rewards(log_ratio, mask, stages.step_end_mask(step_end_table, groups.rollout), beta)
    hits, chance, rows = core.first_error_hits(rewards, valid, first_wrong.clamp(min=0))
    kinds = [arithmetic.step_operation(groups.samples[i].prompt, int(first_wrong[i]))
             for i in rows.nonzero().squeeze(1).tolist()]
    out = {}
    for kind in sorted(set(kinds)):
        picked = torch.tensor([k == kind for k in kinds])
        out[kind] = {"n": int(picked.sum()), "hit_rate": float(hits[picked].mean()),
                     "random": float(chance[picked].mean())}
    return out


@torch.no_grad()
def evaluate_prm(prm, ref, groups: HeldoutGroups, *, beta: float, step_end_table: torch.Tensor,
                 micro_batch_size: int, ref_temperature: float = 1.0,
                 max_tokens: int = 0) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of ``prm`` (engine or module) against ``ref`` on ``groups``; also returns the log-ratios [N, T].

    ``ref`` is the PRM's reference model: the frozen SFT model, or the policy (``prm.reference=policy``,
    read at the sampling temperature as in training).
    """
    batch = groups.rollout
    prm_logp = stages.logprob_stage(prm, batch, micro_batch_size, max_tokens=max_tokens)
    ref_logp = stages.logprob_stage(ref, batch, micro_batch_size, ref_temperature, max_tokens)
    log_ratio = core.implicit_log_ratio(prm_logp, ref_logp, batch.response_mask)
    metrics = prm_metrics(log_ratio, batch.response_ids, batch.response_mask, groups.labels, groups.k, beta,
                          stages.step_end_mask(step_end_table, batch),
                          first_wrong_steps(groups.samples, groups.responses))
    return metrics, log_ratio


def heatmap_rows(groups: HeldoutGroups, log_ratio: torch.Tensor, tokenizer, step_end_table: torch.Tensor,
                 beta: float, n_rows: int) -> list[tuple[dict, TokenHeatmap]]:
    """Up to ``n_rows`` held-out responses to show, from the first groups on: from each group its first
    wrong response (with a located first error) and its first right one, so that each pair answers the
    same prompt. Each comes as (table fields, heatmap)."""
    first_wrong = first_wrong_steps(groups.samples, groups.responses)
    picked: list[int] = []
    for start in range(0, len(groups.samples), groups.k):
        rows = range(start, start + groups.k)
        wrong = [i for i in rows if groups.labels[i] < 1 and first_wrong[i] != 0]
        right = [i for i in rows if groups.labels[i] >= 1]
        picked += [*wrong[:1], *right[:1]]
        if len(picked) >= n_rows:
            break
    batch, out = groups.rollout, []
    picked = picked[:n_rows]
    for i in picked:
        valid = batch.response_mask[i].bool()
        ids = batch.response_ids[i][valid]
        rewards = beta * log_ratio[i][valid]
        seq = float(beta * log_ratio[i][valid].sum())  # as core.sequence_reward sums
        fields = {"prompt": groups.samples[i].prompt.strip(), "response": groups.responses[i],
                  "outcome_score": float(groups.scores[i]), "prm_score": seq,
                  "first_wrong_step": int(first_wrong[i]) if first_wrong[i] > 0 else None}
        title = (f"{fields['prompt']}  outcome {fields['outcome_score']:.2f}  PRM score {seq:+.3f}"
                 + (f"  first wrong step {fields['first_wrong_step']}" if fields["first_wrong_step"] else ""))
        heat = heatmap.of_response(title, [tokenizer.decode([t]) for t in ids.tolist()], rewards,
                                   stages.closes_step(step_end_table, ids), max(int(first_wrong[i]), 0))
        lowest = min(range(len(heat.step_rewards)), key=heat.step_rewards.__getitem__)  # the first, as argmin
        out.append((fields | {"lowest_reward_step": lowest + 1}, heat))
    return out


def save_heatmaps(shown: list[tuple[dict, TokenHeatmap]], stem: Path, png: bool = False) -> None:
    """``STEM.html`` (the heatmaps) and ``STEM.jsonl`` (their table fields); ``STEM.png`` too if asked."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".html").write_text(heatmap.to_page([h for _, h in shown]))
    stem.with_suffix(".jsonl").write_text("".join(json.dumps(fields) + "\n" for fields, _ in shown))
    if png and shown:
        heatmap.to_png([h for _, h in shown], stem.with_suffix(".png"))
