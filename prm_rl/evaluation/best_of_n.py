"""Best-of-N with an implicit PRM: sample N responses per held-out prompt, pick one by the PRM's score, and
compare with majority voting, a random pick and pass@N (the command: ``python -m prm_rl.cli.best_of_n``).

The report (:func:`best_of_n_report`) holds, for every N in 1, 2, 4, ... up to ``n`` (random N-subsets of the
n responses, ``draws`` per prompt):

- ``pass_at_1``, ``pass_at_k`` ({k: acc}, unbiased estimator);
- ``best_of_n``: {"prm_min": {N: acc}, "prm_sum": ..., "weighted_vote": ..., "majority": ..., "random": ...}:
  the highest PRM score (min or sum of step rewards), PRM-weighted voting (sigmoid of the min score per
  answer), plain majority voting over final answers, and a random pick; ``best_of_n_interval`` the 95%
  bootstrap interval over prompts of each;
- the PRM's held-out metrics on the same responses (``step_auroc``, ``first_error_hit_rate``, ...,
  docs/prm_eval.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

from prm_rl import core
from prm_rl.answers import final_answer
from prm_rl.config import PrmEvalSection, PrmSection, RewardSection, TaskSection
from prm_rl.data.prompts import builtin_splits
from prm_rl.evaluation import prm_quality
from prm_rl.models.loading import load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer
from prm_rl.tracking.logger import finite_or_none
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


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
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
    corr = {name: rank_correlation(score, x.float()) for name, x in
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


def best_of_n_report(policy_dir: str, prm_dir: str, ref_dir: str, *, task: str, num_prompts: int, n: int,
                     draws: int, seed: int, temperature: float, max_new_tokens: int, beta: float,
                     device: str = "cpu", dtype: str = "float32") -> dict:
    """Sample ``n`` responses to each of the first ``num_prompts`` held-out prompts of the built-in ``task`` from
    the policy (fixed ``seed``), score them with the verifier and with the PRM against its reference ``ref_dir``,
    and report every selection method at every N (module docstring). The three models compute on ``device`` in
    ``dtype``."""
    torch.set_grad_enabled(False)
    section = TaskSection(name=task)
    prompts = builtin_splits(section.selected, train_size=1, eval_size=section.eval_size, seed=section.seed).eval
    prompts = prompts[:num_prompts]
    tokenizer = load_tokenizer(policy_dir)
    policy, prm, ref = (load_causal_lm(path, dtype, device=device).eval() for path in (policy_dir, prm_dir, ref_dir))
    settings = PrmEvalSection(samples_per_prompt=n, temperature=temperature, seed=seed)
    with build_scorer() as scorer:
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings, max_new_tokens=max_new_tokens)
    step_end_table = stages.step_end_table(tokenizer, RewardSection.step_delimiter)
    metrics, log_ratio = prm_quality.evaluate_prm(prm, ref, groups, beta=beta, step_end_table=step_end_table,
                                                  micro_batch_size=PrmSection.micro_batch_size)
    mask = groups.rollout.response_mask
    rewards, valid, _ = core.step_rewards(log_ratio, mask, stages.step_end_mask(step_end_table, groups.rollout), beta)
    shape = (len(prompts), n)
    sizes = [2 ** i for i in range(n.bit_length()) if 2 ** i <= n]
    correct = (groups.scores >= 1.0).long().view(shape)
    score_min = core.response_score(rewards, valid, "min").view(shape)
    report = selection_report(correct, score_min, core.response_score(rewards, valid, "sum").view(shape),
                              answer_ids(groups.responses, n), sizes, draws, seed)
    report["prm_min_profile"] = top_pick_profile(score_min, correct, valid.sum(dim=1).view(shape),
                                                 mask.sum(dim=1).view(shape))
    metrics = finite_or_none(metrics)  # NaN (an empty class) is null in JSON
    return report | {"step_auroc": metrics.get("step_auroc"),
                     "first_error_hit_rate": metrics.get("first_error_hit_rate"), "prm_metrics": metrics,
                     "policy": policy_dir, "prm": prm_dir, "ref": ref_dir, "num_prompts": len(prompts), "n": n,
                     "draws": draws, "seed": seed}
