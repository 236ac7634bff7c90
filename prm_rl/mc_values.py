"""Monte-Carlo step labels, the costly baseline an implicit PRM replaces:
``python -m prm_rl.mc_values --policy DIR [--prm-runs RUN ...] [--rollouts K] [--out F.json]``.

Samples ``--n`` responses to each of the first ``--num-prompts`` held-out prompts of the built-in task from
``--policy`` (the same seed, and so the same responses, as ``python -m prm_rl.best_of_n``), then, for every
step prefix of every response, samples ``--rollouts`` completions and verifies them (Math-Shepherd, Wang et
al. 2024). A step's value V_k is the share of its completions that reach the right answer (``soft``) or
whether any does (``hard``); the last step's value is the response's own outcome, and V_0 that of the bare
prompt, the group's mean outcome. Reported for each estimate: ``step_auroc`` of V_k and of V_k - V_{k-1}
against the checked step labels, the first-error hit rate of V_k - V_{k-1} (docs/prm_eval.md), and the cost:
completions, generated tokens, FLOPs (:mod:`prm_rl.cost`) and seconds.

``--prm-runs RUN ...`` (``launch/train_prm.py`` runs) adds each PRM's metrics on the very same responses and its
cost (labelled data + training, from ``RUN/summary.json``), so the two come side by side.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from prm_rl import core, cost
from prm_rl.config import PrmEvalSection, PrmSection, RewardSection, RolloutSection, TaskSection
from prm_rl.data.prompts import builtin_splits
from prm_rl.data.sample import Sample, encode_prompts
from prm_rl.errors import UsageError, exit_on_usage_error
from prm_rl.models.loading import check_checkpoint, load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer
from prm_rl.rollout.generate import generate, left_pad
from prm_rl.tracking.logger import finite_or_none

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.evaluation import prm_quality
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
    start = groups.scores.view(-1, groups.k).mean(dim=1).repeat_interleave(groups.k)  # V_0: the group's mean
    last = valid.sum(dim=1) - 1
    out = {}
    for name, values in zip(("soft", "hard"), core.monte_carlo_values(successes)):
        v = torch.zeros(n_rows, width)
        for (row, step, _), value in zip(prefixes, values):
            v[row, step] = value
        v[torch.arange(n_rows), last] = (groups.scores >= 1.0).float()  # the last step: the outcome itself
        rows = first_wrong >= 0
        delta = core.value_increments(v, start)
        judged = (valid[rows], first_wrong[rows])
        hit, chance, n = core.first_error_hit_rate(delta[rows], *judged)
        out[name] = finite_or_none({"step_auroc_value": core.step_auroc(v[rows], *judged),
                                    "step_auroc_increment": core.step_auroc(delta[rows], *judged),
                                    "first_error_hit_rate": hit, "first_error_random": chance, "first_error_n": n})
    return out


def implicit_prm_side(run: Path, groups: prm_quality.HeldoutGroups, step_end_table: torch.Tensor) -> dict:
    """A train_prm run's PRM on the same responses: its metrics, and its cost (labelled data + training from the
    run's summary.json, then scoring these responses: one forward of the PRM and one of its reference)."""
    summary = json.loads((run / "summary.json").read_text())
    prm, ref = load_causal_lm(summary["prm"], "float32").eval(), load_causal_lm(summary["reference"], "float32")
    metrics, _ = prm_quality.evaluate_prm(prm, ref.eval(), groups, beta=summary["beta"], step_end_table=step_end_table,
                                       micro_batch_size=PrmSection.micro_batch_size)
    c = summary["cost"]
    scoring = 2 * cost.forward_flops(c["parameters"], cost.tokens(groups.rollout))
    return {"metrics": finite_or_none(metrics), "loss": summary.get("loss"),
            "cost": {"rows": summary["rows"], "data_flops": c["data_flops"], "training_flops": c["training_flops"],
                     "scoring_flops": scoring, "flops": c["data_flops"] + c["training_flops"] + scoring,
                     "seconds": summary["wall_seconds"]}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m prm_rl.mc_values", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the model whose responses are labelled and completed")
    parser.add_argument("--prm-runs", type=Path, nargs="*", default=[], help="launch/train_prm.py runs to compare")
    parser.add_argument("--num-prompts", type=int, default=64, help="held-out prompts")
    parser.add_argument("--n", type=int, default=8, help="responses sampled per prompt")
    parser.add_argument("--rollouts", type=int, default=8, help="K: completions per step prefix")
    parser.add_argument("--seed", type=int, default=PrmEvalSection.seed, help="sampling seed")
    parser.add_argument("--temperature", type=float, default=RolloutSection.temperature, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=RolloutSection.max_new_tokens, help="response cap")
    parser.add_argument("--batch-size", type=int, default=1024, help="completions per generate call")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (also printed)")
    args = parser.parse_args(argv)

    with exit_on_usage_error():  # before anything loads: a bad path is one line, not a traceback
        check_checkpoint("--policy", args.policy, tokenizer=True)
        for run in args.prm_runs:
            if not (run / "summary.json").is_file():
                raise UsageError(f"--prm-runs {run}: no summary.json (not a finished launch/train_prm.py run)")
    torch.set_grad_enabled(False)
    task = TaskSection()
    prompts: list[Sample] = builtin_splits(task.selected, train_size=1, eval_size=task.eval_size,
                                           seed=task.seed).eval[:args.num_prompts]
    tokenizer = load_tokenizer(args.policy)
    policy = load_causal_lm(args.policy, "float32").eval()
    step_end_table = stages.step_end_table(tokenizer, RewardSection.step_delimiter)
    settings = PrmEvalSection(samples_per_prompt=args.n, temperature=args.temperature, seed=args.seed)
    with build_scorer() as scorer:
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings,
                                         max_new_tokens=args.max_new_tokens)
        valid, prefixes = step_prefixes(groups, tokenizer, step_end_table)
        started = time.time()
        torch.manual_seed(args.seed + 1)
        successes, spent = rollout_successes(policy, tokenizer, scorer, groups, prefixes, args.rollouts,
                                             temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                             batch_size=args.batch_size)
    spent["seconds"] = round(time.time() - started, 1)
    report = {"policy": args.policy, "num_prompts": len(prompts), "n": args.n, "rollouts": args.rollouts,
              "seed": args.seed, "responses": len(groups.responses), "prefixes": len(prefixes),
              "monte_carlo": mc_report(groups, valid, prefixes, successes), "monte_carlo_cost": spent}
    report["implicit_prm"] = {str(run): implicit_prm_side(run, groups, step_end_table) for run in args.prm_runs}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
