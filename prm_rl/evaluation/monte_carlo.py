"""Monte-Carlo step labels, the costly baseline an implicit PRM replaces (the command:
``python -m prm_rl.cli.mc_values``).

Samples ``n`` responses to each of the first ``num_prompts`` held-out prompts of the built-in task from a policy
(the same seed, and so the same responses, as :mod:`prm_rl.evaluation.best_of_n`), then, for every step prefix of
every response, samples ``rollouts`` completions and verifies them (Math-Shepherd, Wang et al. 2024). A step's
value V_k is the share of its completions that reach the right answer (``soft``) or whether any does (``hard``);
the last step's value is the response's own outcome, and V_0 that of the bare prompt, the group's mean outcome.
Reported for each estimate: ``step_auroc`` of V_k and of V_k - V_{k-1} against the checked step labels, the
first-error hit rate of V_k - V_{k-1} (docs/prm_eval.md), and the cost: completions, generated tokens, FLOPs
(:mod:`prm_rl.cost`) and seconds. Finished ``launch/train_prm.py`` runs can be scored on the very same responses
(:func:`implicit_prm_side`), so the two come side by side.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from prm_rl import core, cost
from prm_rl.config import PrmEvalSection, PrmSection, RewardSection, TaskSection
from prm_rl.data.prompts import builtin_splits
from prm_rl.data.sample import encode_prompts
from prm_rl.evaluation import prm_quality
from prm_rl.models.loading import load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer
from prm_rl.rollout.generate import generate, left_pad
from prm_rl.tracking.logger import finite_or_none
from prm_rl.trainer import stages


def step_prefixes(groups: prm_quality.HeldoutGroups, tokenizer, step_end_table: torch.Tensor):
    """Every step of every response: (valid [N, S], prefixes), a prefix per (row, step) but the last step,
    as (row, step, token ids of prompt + response up to and including the step's last token)."""
    batch = groups.rollout
    mask = batch.response_mask
    _, valid, end_pos = core.step_rewards(torch.zeros(mask.shape), mask, stages.step_end_mask(step_end_table, batch),
                                          1.0)
    prompts = encode_prompts(tokenizer, [s.prompt for s in groups.samples])
    prefixes = []
    for row in range(len(batch)):
        steps = int(valid[row].sum())
        for step in range(steps - 1):  # the last step ends the response: its value is the outcome itself
            end = int(end_pos[row, step])
            prefixes.append((row, step, prompts[row] + batch.response_ids[row, :end + 1].tolist()))
    return valid, prefixes


def rollout_successes(policy, tokenizer, scorer, groups: prm_quality.HeldoutGroups, prefixes, rollouts: int, *,
                      temperature: float, max_new_tokens: int, batch_size: int) -> tuple[torch.Tensor, dict]:
    """[len(prefixes), rollouts] outcome scores of completions of each prefix, and what they cost. A completion
    gets what is left of the response budget: ``max_new_tokens`` minus the response tokens of its prefix."""
    prompt_tokens = encode_prompts(tokenizer, [s.prompt for s in groups.samples])
    jobs = [(i, ids) for i, (_, _, ids) in enumerate(prefixes) for _ in range(rollouts)]
    scores = torch.zeros(len(prefixes), rollouts)
    filled = [0] * len(prefixes)
    params, flops, generated = cost.parameter_count(policy), 0.0, 0
    for start in range(0, len(jobs), batch_size):
        part = jobs[start:start + batch_size]
        ids, mask = left_pad([p for _, p in part], tokenizer.pad_token_id)
        done = [len(p) - len(prompt_tokens[prefixes[i][0]]) for i, p in part]  # response tokens so far
        out = generate(policy, ids, mask, max_new_tokens=max(1, max_new_tokens - min(done)),
                       eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, do_sample=True,
                       temperature=temperature)
        texts, samples = [], []
        for j, (i, prefix) in enumerate(part):
            budget = max_new_tokens - done[j]
            new = out.response_ids[j][out.response_mask[j].bool()][:budget].tolist()
            generated += len(new)
            flops += cost.forward_flops(params, len(prefix) + len(new))
            row = prefixes[i][0]
            response = groups.rollout.response_ids[row, :done[j]].tolist() + new
            texts.append(tokenizer.decode(response, skip_special_tokens=True))
            samples.append(groups.samples[row])
        result = scorer.score(samples, texts)
        for (i, _), value in zip(part, result.scores):
            scores[i, filled[i]] = float(value)
            filled[i] += 1
    return scores, {"completions": len(jobs), "generated_tokens": generated, "flops": flops}


def mc_report(groups: prm_quality.HeldoutGroups, valid: torch.Tensor, prefixes, successes: torch.Tensor) -> dict:
    """Step values (soft and hard) of every response and their step-level metrics against the checked labels."""
    n_rows, width = valid.shape
    first_wrong = prm_quality.first_wrong_steps(groups.samples, groups.responses)
    start = groups.labels.view(-1, groups.k).mean(dim=1).repeat_interleave(groups.k)  # V_0: the group's mean
    last = valid.sum(dim=1) - 1
    out = {}
    for name, values in zip(("soft", "hard"), core.monte_carlo_values(successes)):
        v = torch.zeros(n_rows, width)
        for (row, step, _), value in zip(prefixes, values):
            v[row, step] = value
        v[torch.arange(n_rows), last] = (groups.labels >= 1.0).float()  # the last step: the outcome itself
        rows = first_wrong >= 0
        delta = core.value_increments(v, start)
        judged = (valid[rows], first_wrong[rows])
        hit, chance, n = core.first_error_hit_rate(delta[rows], *judged)
        out[name] = finite_or_none({"step_auroc_value": core.step_auroc(v[rows], *judged),
                                    "step_auroc_increment": core.step_auroc(delta[rows], *judged),
                                    "first_error_hit_rate": hit, "first_error_random": chance, "first_error_n": n})
    return out


def implicit_prm_side(run: Path, groups: prm_quality.HeldoutGroups, step_end_table: torch.Tensor, *,
                      device: str = "cpu", dtype: str = "float32") -> dict:
    """A train_prm run's PRM on the same responses: its metrics, and its cost (labelled data + training from the
    run's summary.json, then scoring these responses: one forward of the PRM and one of its reference)."""
    summary = json.loads((run / "summary.json").read_text())
    prm, ref = (load_causal_lm(summary[role], dtype, device=device).eval() for role in ("prm", "reference"))
    metrics, _ = prm_quality.evaluate_prm(prm, ref, groups, beta=summary["beta"], step_end_table=step_end_table,
                                       micro_batch_size=PrmSection.micro_batch_size)
    c = summary["cost"]
    scoring = 2 * cost.forward_flops(c["parameters"], cost.tokens(groups.rollout))
    return {"metrics": finite_or_none(metrics), "loss": summary.get("loss"),
            "cost": {"rows": summary["rows"], "data_flops": c["data_flops"], "training_flops": c["training_flops"],
                     "scoring_flops": scoring, "flops": c["data_flops"] + c["training_flops"] + scoring,
                     "seconds": summary["wall_seconds"]}}


@torch.no_grad()
def monte_carlo_report(policy_dir: str, prm_runs: list[Path], *, num_prompts: int, n: int, rollouts: int, seed: int,
                       temperature: float, max_new_tokens: int, batch_size: int, device: str = "cpu",
                       dtype: str = "float32") -> dict:
    """Monte-Carlo step values of the policy's held-out responses, their metrics and cost, and each finished
    ``launch/train_prm.py`` run of ``prm_runs`` on the same responses (module docstring); every model computes on
    ``device`` in ``dtype``."""
    task = TaskSection()
    prompts = builtin_splits(task.selected, train_size=1, eval_size=task.eval_size, seed=task.seed).eval[:num_prompts]
    tokenizer = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir, dtype, device=device).eval()
    step_end_table = stages.step_end_table(tokenizer, RewardSection.step_delimiter)
    settings = PrmEvalSection(samples_per_prompt=n, temperature=temperature, seed=seed)
    with build_scorer() as scorer:
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings, reward=RewardSection(),
                                            max_new_tokens=max_new_tokens)  # the built-in verifiers: [0, 1]
        valid, prefixes = step_prefixes(groups, tokenizer, step_end_table)
        started = time.time()
        torch.manual_seed(seed + 1)
        successes, spent = rollout_successes(policy, tokenizer, scorer, groups, prefixes, rollouts,
                                             temperature=temperature, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size)
    spent["seconds"] = round(time.time() - started, 1)
    return {"policy": policy_dir, "num_prompts": len(prompts), "n": n, "rollouts": rollouts, "seed": seed,
            "responses": len(groups.responses), "prefixes": len(prefixes),
            "monte_carlo": mc_report(groups, valid, prefixes, successes), "monte_carlo_cost": spent,
            "implicit_prm": {str(run): implicit_prm_side(run, groups, step_end_table, device=device, dtype=dtype)
                             for run in prm_runs}}
