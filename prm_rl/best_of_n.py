"""Best-of-N with an implicit PRM on the built-in task's held-out prompts:
``python -m prm_rl.best_of_n --policy DIR --prm DIR --ref DIR [--out F.json] [--plot F.png]``.

Samples ``--n`` responses to each of the first ``--num-prompts`` held-out prompts from ``--policy`` (fixed seed),
scores them with the verifier and with the PRM (against ``--ref``, its reference), and reports, for every
N in 1, 2, 4, ... up to ``--n`` (random N-subsets of the n responses, ``--draws`` per prompt):

- ``pass_at_1``, ``pass_at_k`` ({k: acc}, unbiased estimator);
- ``best_of_n``: {"prm_min": {N: acc}, "prm_sum": ..., "weighted_vote": ..., "majority": ..., "random": ...}:
  the highest PRM score (min or sum of step rewards), PRM-weighted voting (sigmoid of the min score per
  answer), plain majority voting over final answers, and a random pick; ``best_of_n_interval`` the 95%
  bootstrap interval over prompts of each;
- the PRM's held-out metrics on the same responses (``step_auroc``, ``first_error_hit_rate``, ...,
  docs/prm_eval.md).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

from prm_rl import core
from prm_rl.answers import final_answer
from prm_rl.config import PrmEvalSection, PrmSection, RewardSection, RolloutSection, TaskSection
from prm_rl.data.prompts import BUILTIN_TASKS, builtin_splits
from prm_rl.errors import exit_on_usage_error
from prm_rl.models.loading import check_checkpoint, load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer
from prm_rl.tracking.logger import finite_or_none

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed (imported by the stages) prints a notice on stdout
    from prm_rl.evaluation import prm_quality
    from prm_rl.trainer import stages

METHODS = ("prm_min", "prm_sum", "weighted_vote", "majority", "random")


def answer_ids(responses: list[str], n: int) -> torch.Tensor:
    """[P, n]: each response's final answer as an index among its prompt's distinct answers (-1: none)."""
    ids = []
    for start in range(0, len(responses), n):
        seen: dict[str, int] = {}
        row = []
        for text in responses[start:start + n]:
            answer = final_answer(text)
            row.append(-1 if answer is None else seen.setdefault(answer.strip(), len(seen)))
        ids.append(row)
    return torch.tensor(ids, dtype=torch.long)


def selection_report(correct: torch.Tensor, score_min: torch.Tensor, score_sum: torch.Tensor, answers: torch.Tensor,
                     sizes: list[int], draws: int, seed: int) -> dict:
    """pass@k and every best-of-N method at every N in ``sizes`` (all tensors [P, n]; module docstring)."""
    g = torch.Generator().manual_seed(seed)
    per_prompt = {
        "prm_min": lambda size: core.best_of_n(score_min, correct, size, draws, g),
        "prm_sum": lambda size: core.best_of_n(score_sum, correct, size, draws, g),
        "weighted_vote": lambda size: core.vote(answers, correct, torch.sigmoid(score_min), size, draws, g),
        "majority": lambda size: core.vote(answers, correct, torch.ones_like(score_min), size, draws, g),
        "random": lambda size: core.best_of_n(torch.zeros_like(score_min), correct, size, draws, g),
    }
    accuracy: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    interval: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    for method, run in per_prompt.items():
        for size in sizes:
            mean, low, high = core.bootstrap_interval(run(size), g)
            accuracy[method][size], interval[method][size] = mean, [low, high]
    return {"pass_at_1": float(core.pass_at_k(correct, 1).mean()),
            "pass_at_k": {k: float(core.pass_at_k(correct, k).mean()) for k in sizes},
            "best_of_n": accuracy, "best_of_n_interval": interval}


def _rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over prompts of the Spearman correlation of two [P, n] tensors within each prompt (ties by index)."""
    ra, rb = (x.argsort(dim=1).argsort(dim=1).float() for x in (a, b))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return float(((ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-9)).mean())


def top_pick_profile(score: torch.Tensor, correct: torch.Tensor, steps: torch.Tensor, tokens: torch.Tensor) -> dict:
    """What the highest-scored of all n responses looks like next to all of them ([P, n] each): its accuracy,
    steps and length, and the within-prompt rank correlation of the score with each."""
    top = score.argmax(dim=1, keepdim=True)
    pick = {name: float(x.float().gather(1, top).mean()) for name, x in
            (("correct", correct), ("steps", steps), ("tokens", tokens))}
    every = {name: float(x.float().mean()) for name, x in (("correct", correct), ("steps", steps), ("tokens", tokens))}
    corr = {name: _rank_correlation(score, x.float()) for name, x in
            (("correct", correct), ("steps", steps), ("tokens", tokens))}
    return {"top_pick": pick, "all": every, "rank_correlation_with_score": corr}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        sizes = sorted(report["best_of_n"][method])
        acc = [report["best_of_n"][method][s] for s in sizes]
        low = [a - report["best_of_n_interval"][method][s][0] for a, s in zip(acc, sizes)]
        high = [report["best_of_n_interval"][method][s][1] - a for a, s in zip(acc, sizes)]
        ax.errorbar(sizes, acc, yerr=[low, high], marker="o", capsize=3, label=method)
    sizes = sorted(report["pass_at_k"])
    ax.plot(sizes, [report["pass_at_k"][k] for k in sizes], "k--", label="pass@N (oracle)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (responses to choose from)")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m prm_rl.best_of_n", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the model whose responses are chosen from")
    parser.add_argument("--prm", required=True, help="the implicit PRM's checkpoint directory")
    parser.add_argument("--ref", required=True, help="its reference model (the SFT model of the run)")
    parser.add_argument("--task", choices=tuple(BUILTIN_TASKS), default=TaskSection.name, help="built-in task")
    parser.add_argument("--num-prompts", type=int, default=PrmEvalSection.num_prompts, help="held-out prompts")
    parser.add_argument("--n", type=int, default=16, help="responses sampled per prompt (the largest N)")
    parser.add_argument("--draws", type=int, default=64, help="random N-subsets per prompt and N")
    parser.add_argument("--seed", type=int, default=PrmEvalSection.seed, help="sampling and subset seed")
    parser.add_argument("--temperature", type=float, default=RolloutSection.temperature, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=RolloutSection.max_new_tokens, help="response cap")
    parser.add_argument("--beta", type=float, default=PrmSection.beta, help="log-ratio scale (prm.beta)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (also printed)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against N")
    args = parser.parse_args(argv)

    with exit_on_usage_error():  # before anything loads: a bad path is one line, not a traceback
        check_checkpoint("--policy", args.policy, tokenizer=True)
        check_checkpoint("--prm", args.prm, tokenizer=False)
        check_checkpoint("--ref", args.ref, tokenizer=False)
    torch.set_grad_enabled(False)
    task = TaskSection(name=args.task)
    prompts = builtin_splits(task.selected, train_size=1, eval_size=task.eval_size, seed=task.seed).eval
    prompts = prompts[:args.num_prompts]
    tokenizer = load_tokenizer(args.policy)
    policy = load_causal_lm(args.policy, "float32").eval()
    prm, ref = load_causal_lm(args.prm, "float32").eval(), load_causal_lm(args.ref, "float32").eval()
    settings = PrmEvalSection(samples_per_prompt=args.n, temperature=args.temperature, seed=args.seed)
    with build_scorer() as scorer:
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings,
                                         max_new_tokens=args.max_new_tokens)
    step_end_table = stages.step_end_table(tokenizer, RewardSection.step_delimiter)
    metrics, log_ratio = prm_quality.evaluate_prm(prm, ref, groups, beta=args.beta, step_end_table=step_end_table,
                                               micro_batch_size=PrmSection.micro_batch_size)
    mask = groups.rollout.response_mask
    rewards, valid, _ = core.step_rewards(log_ratio, mask, stages.step_end_mask(step_end_table, groups.rollout),
                                          args.beta)
    shape = (len(prompts), args.n)
    sizes = [2 ** i for i in range(args.n.bit_length()) if 2 ** i <= args.n]
    correct = (groups.scores >= 1.0).long().view(shape)
    score_min = core.response_score(rewards, valid, "min").view(shape)
    report = selection_report(correct, score_min, core.response_score(rewards, valid, "sum").view(shape),
                              answer_ids(groups.responses, args.n), sizes, args.draws, args.seed)
    report["prm_min_profile"] = top_pick_profile(score_min, correct, valid.sum(dim=1).view(shape),
                                                 mask.sum(dim=1).view(shape))
    metrics = finite_or_none(metrics)  # NaN (an empty class) is null in JSON
    report |= {"step_auroc": metrics.get("step_auroc"), "first_error_hit_rate": metrics.get("first_error_hit_rate"),
               "prm_metrics": metrics, "policy": args.policy, "prm": args.prm, "ref": args.ref,
               "num_prompts": len(prompts), "n": args.n, "draws": args.draws, "seed": args.seed}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.plot:
        plot(report, args.plot)
    print(text)
    return report


if __name__ == "__main__":
    main()
