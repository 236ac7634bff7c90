"""Best-of-N with an implicit PRM: sample N responses per held-out prompt, pick one by the PRM's score, and
compare with majority voting, a random pick and pass@N (the command: ``python -m prm_rl.cli.best_of_n``).

The report (:func:`best_of_n_report`) holds, for every N in 1, 2, 4, ... up to ``n`` (random N-subsets of the
n responses, ``draws`` per prompt, the same subsets for every method):

- ``pass_at_1``, ``pass_at_k`` ({k: acc}, unbiased estimator);
- ``best_of_n``: {method: {N: acc}} for every method of :data:`METHODS`: the highest score of each read-out of
  :data:`READOUTS`, PRM-weighted voting, plain majority voting over final answers, and a random pick;
  ``best_of_n_interval`` the 95% bootstrap interval over prompts of each, ``vs_majority`` each method minus
  majority voting with its paired bootstrap interval;
- ``top_pick``: what the highest-scored of all n responses looks like under each read-out (accuracy, steps,
  tokens, copies of its text, reference log-likelihood) next to all responses and the right ones, and the
  within-prompt rank correlation of each score with those: what drives the pick (:func:`top_pick_profile`);
- the PRM's held-out metrics on the same responses (``step_auroc``, ``first_error_hit_rate``, ...,
  docs/prm_eval.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prm_rl import core
from prm_rl.answers import final_answer
from prm_rl.config import PrmEvalSection, PrmSection, RewardSection, TaskSection
from prm_rl.core.selection import at_step_ends, last_step
from prm_rl.data.prompts import builtin_splits
from prm_rl.evaluation import prm_quality
from prm_rl.models.loading import load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer
from prm_rl.tracking.logger import finite_or_none
from prm_rl.trainer import stages


@dataclass(frozen=True)
class ScoredResponses:
    """n responses to each of P prompts, rows prompt-major (prompt i's responses are rows i*n .. i*n + n - 1),
    with everything a read-out or a profile reads. S = the most steps of any response."""

    correct: torch.Tensor  # [P, n] long: 1 when the verifier accepts the response
    answers: torch.Tensor  # [P, n] long: final answer's index among the prompt's distinct answers, -1 for none
    step_rewards: torch.Tensor  # [P * n, S] q_k - q_{k-1} (beta applied)
    step_values: torch.Tensor  # [P * n, S] v_k = q_k / (tokens up to the end of step k): the prefix loss's value
    step_valid: torch.Tensor  # [P * n, S] bool
    ref_logprob: torch.Tensor  # [P * n] log pi_ref(y): the reference's log-likelihood of the whole response
    tokens: torch.Tensor  # [P, n] long: response length in tokens, EOS included
    first_wrong: torch.Tensor  # [P, n] long: 1-based first wrong step, 0 all right, -1 not checkable
    responses: list[str]  # [P * n] decoded
    beta: float  # the scale of the step rewards and values

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.correct.shape)

    @property
    def steps(self) -> torch.Tensor:
        """[P, n] long: steps per response (lines, the boxed answer's included)."""
        return self.step_valid.sum(dim=1).view(self.shape)


# Best-of-N read-outs: how one score per response is read off the PRM (the highest score is kept). Names are
# report keys (``best_of_n[name]``) and values of the command's ``--vote-by``.
READOUTS: dict[str, Callable[[ScoredResponses], torch.Tensor]] = {
    # the worst step reward q_k - q_{k-1}: the Implicit PRM paper's response score
    "prm_min": lambda s: core.response_score(s.step_rewards, s.step_valid, "min"),
    # q_K, the whole response's implicit reward: what the ce and dpo losses train
    "prm_sum": lambda s: core.response_score(s.step_rewards, s.step_valid, "sum"),
    # the average step reward q_K / K
    "prm_mean": lambda s: core.response_score(s.step_rewards, s.step_valid, "mean"),
    # the last step's reward (the boxed answer's line)
    "prm_last": lambda s: last_step(s.step_rewards, s.step_valid),
    # v_T = q_K / T: the length-normalised value of the whole response, what the prefix loss trains at its end
    "prm_value": lambda s: last_step(s.step_values, s.step_valid),
    # the lowest prefix value v_k over the step ends: the weakest prefix, as the prefix loss judges prefixes
    "prm_value_min": lambda s: core.response_score(s.step_values, s.step_valid, "min"),
    # beta * log pi_phi(y) = q_K + beta * log pi_ref(y): the response's likelihood under the PRM's own model, the
    # policy pi_ref * exp(r / beta) that the implicit reward r defines. q_K alone cannot rise above
    # beta * -log pi_ref(y), so it favours responses the reference finds unlikely; this read-out does not
    "prm_policy": lambda s: core.response_score(s.step_rewards, s.step_valid, "sum") + s.beta * s.ref_logprob,
    # no PRM: log pi_ref(y), the reference's own likelihood of the response (what prm_policy adds the PRM to)
    "ref_likelihood": lambda s: s.ref_logprob,
}
# Methods that pool the responses giving the same final answer: the answer with the largest total weight wins.
# weighted_vote: sigmoid of read-out ``vote_by`` (the Implicit PRM paper's); ratio_vote: exp(q_K / beta) =
# pi_phi(y) / pi_ref(y), with which the votes of responses sampled from pi_ref estimate how likely the PRM's own
# model is to give each answer (importance weights; exact in expectation when the policy is the reference);
# majority: every response 1. random: a uniform pick.
VOTES = ("weighted_vote", "ratio_vote", "majority", "random")
METHODS = (*READOUTS, *VOTES)


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


def text_copies(responses: list[str], n: int) -> torch.Tensor:
    """[P, n] long: how many of its prompt's n responses are the very same text as each response (itself included)."""
    return torch.tensor([[group.count(text) for text in group]
                         for group in (responses[start:start + n] for start in range(0, len(responses), n))])


def readout_scores(scored: ScoredResponses) -> dict[str, torch.Tensor]:
    """{read-out: [P, n] score} for every read-out of :data:`READOUTS`."""
    return {name: readout(scored).view(scored.shape) for name, readout in READOUTS.items()}


def vote_weights(scored: ScoredResponses, vote_by: torch.Tensor) -> dict[str, torch.Tensor]:
    """{vote: [P, n] weight} of the PRM votes of :data:`VOTES`; ``vote_by`` [P, n] the weighted vote's read-out."""
    log_ratio = READOUTS["prm_sum"](scored).view(scored.shape).double() / scored.beta
    # a prompt's weights matter only relative to each other: shifted by the prompt's largest, exp cannot overflow
    ratio = (log_ratio - log_ratio.max(dim=1, keepdim=True).values).exp()
    return {"weighted_vote": torch.sigmoid(vote_by), "ratio_vote": ratio}


def selection_report(correct: torch.Tensor, scores: dict[str, torch.Tensor], answers: torch.Tensor,
                     vote_weights: dict[str, torch.Tensor], sizes: list[int], draws: int, seed: int) -> dict:
    """pass@k and every best-of-N method at every N in ``sizes`` (all tensors [P, n]; ``scores`` one per read-out,
    ``vote_weights`` one per PRM vote of :data:`VOTES`; module docstring). Every method sees the same N-subsets
    and the same bootstrap resamples of prompts (one generator seeded alike per method), so differences between
    methods are paired."""
    per_prompt: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {
        name: (lambda size, g, score=score: core.best_of_n(score, correct, size, draws, g))
        for name, score in scores.items()}
    per_prompt |= {name: (lambda size, g, weights=weights: core.vote(answers, correct, weights, size, draws, g))
                   for name, weights in vote_weights.items()}
    per_prompt |= {
        "majority": lambda size, g: core.vote(answers, correct, torch.ones_like(correct).float(), size, draws, g),
        "random": lambda size, g: core.best_of_n(torch.zeros_like(correct).float(), correct, size, draws, g),
    }
    accuracy: dict[str, dict[int, float]] = {m: {} for m in per_prompt}
    interval: dict[str, dict[int, list[float]]] = {m: {} for m in per_prompt}
    versus: dict[str, dict[int, list[float]]] = {m: {} for m in per_prompt}
    for size in sizes:
        results = {method: run(size, torch.Generator().manual_seed(seed)) for method, run in per_prompt.items()}
        for method, result in results.items():
            mean, low, high = core.bootstrap_interval(result, torch.Generator().manual_seed(seed))
            accuracy[method][size], interval[method][size] = mean, [low, high]
            versus[method][size] = list(core.bootstrap_interval(result - results["majority"],
                                                                torch.Generator().manual_seed(seed)))
    return {"pass_at_1": float(core.pass_at_k(correct, 1).mean()),
            "pass_at_k": {k: float(core.pass_at_k(correct, k).mean()) for k in sizes},
            "best_of_n": accuracy, "best_of_n_interval": interval, "vs_majority": versus}


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over prompts of the Spearman correlation of two [P, n] tensors within each prompt (ties by index)."""
    ra, rb = (x.argsort(dim=1).argsort(dim=1).float() for x in (a, b))
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    return float(((ra * rb).sum(dim=1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-9)).mean())


def top_pick_profile(scored: ScoredResponses, scores: dict[str, torch.Tensor]) -> dict:
    """What the highest-scored of all n responses is under each read-out, beside all responses and the right
    ones: its accuracy, steps, tokens, whether it gives an answer, how many of the n responses are the same text,
    its log-likelihood under the reference, and (for a wrong pick whose steps can be checked) where its first
    error is; plus each score's within-prompt rank correlation with correctness, steps, tokens and the reference
    log-likelihood."""
    features = {"correct": scored.correct.float(), "steps": scored.steps.float(), "tokens": scored.tokens.float(),
                "answered": (scored.answers >= 0).float(),
                "copies": text_copies(scored.responses, scored.shape[1]).float(),
                "ref_logprob": scored.ref_logprob.view(scored.shape)}

    def describe(chosen: torch.Tensor) -> dict[str, float | None]:  # chosen [P, n] bool
        out = {name: float(x[chosen].mean()) for name, x in features.items()}
        wrong = chosen & (scored.first_wrong > 0)
        out["first_wrong_step"] = float(scored.first_wrong[wrong].float().mean()) if wrong.any() else float("nan")
        return finite_or_none(out)

    profile = {"all": describe(torch.ones_like(scored.correct, dtype=torch.bool)),
               "right": describe(scored.correct.bool())}
    for name, score in scores.items():
        top = torch.zeros_like(scored.correct, dtype=torch.bool).scatter_(1, score.argmax(dim=1, keepdim=True), True)
        profile[name] = describe(top) | {f"rank_correlation_{f}": rank_correlation(score, features[f])
                                         for f in ("correct", "steps", "tokens", "ref_logprob")}
    return profile


def response_rows(scored: ScoredResponses, scores: dict[str, torch.Tensor]) -> list[dict]:
    """One dict per response: prompt index, text, the features of :func:`top_pick_profile`, its step rewards,
    step values and every read-out's score (for a closer look than the report's averages)."""
    n = scored.shape[1]
    copies = text_copies(scored.responses, n).flatten().tolist()
    rows = []
    for i, text in enumerate(scored.responses):
        p, j = divmod(i, n)
        valid = scored.step_valid[i]
        rows.append({"prompt": p, "response": text, "correct": int(scored.correct[p, j]),
                     "steps": int(valid.sum()), "tokens": int(scored.tokens[p, j]),
                     "first_wrong_step": int(scored.first_wrong[p, j]), "answer_id": int(scored.answers[p, j]),
                     "copies": copies[i], "ref_logprob": float(scored.ref_logprob[i]),
                     "step_rewards": scored.step_rewards[i][valid].tolist(),
                     "step_values": scored.step_values[i][valid].tolist()}
                    | {name: float(score[p, j]) for name, score in scores.items()})
    return rows


def write_responses(path: Path, rows: list[dict]) -> None:
    """:func:`response_rows` as JSONL (one response a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(METHODS):
        sizes = sorted(report["best_of_n"][method])
        acc = [report["best_of_n"][method][s] for s in sizes]
        low = [a - report["best_of_n_interval"][method][s][0] for a, s in zip(acc, sizes)]
        high = [report["best_of_n_interval"][method][s][1] - a for a, s in zip(acc, sizes)]
        ax.errorbar(sizes, acc, yerr=[low, high], marker="o", capsize=3, color=plt.get_cmap("tab20")(i),
                    label=method)  # more methods than the default 10 colours
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


@torch.no_grad()
def score_responses(policy_dir: str, prm_dir: str, ref_dir: str, *, task: str, num_prompts: int, n: int, seed: int,
                    temperature: float, max_new_tokens: int, beta: float, device: str = "cpu",
                    dtype: str = "float32") -> tuple[ScoredResponses, dict[str, float]]:
    """Sample ``n`` responses to each of the first ``num_prompts`` held-out prompts of the built-in ``task`` from
    the policy (fixed ``seed``), score them with the verifier and with the PRM against its reference ``ref_dir``;
    also the PRM's held-out metrics on them. The three models compute on ``device`` in ``dtype``."""
    section = TaskSection(name=task)
    prompts = builtin_splits(section.selected, train_size=1, eval_size=section.eval_size, seed=section.seed).eval
    prompts = prompts[:num_prompts]
    tokenizer = load_tokenizer(policy_dir)
    policy, prm, ref = (load_causal_lm(path, dtype, device=device).eval() for path in (policy_dir, prm_dir, ref_dir))
    settings = PrmEvalSection(samples_per_prompt=n, temperature=temperature, seed=seed)
    with build_scorer() as scorer:
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings, reward=RewardSection(),
                                            max_new_tokens=max_new_tokens)  # the built-in verifiers: [0, 1]
    step_end_table = stages.step_end_table(tokenizer, RewardSection.step_delimiter)
    metrics, log_ratio = prm_quality.evaluate_prm(prm, ref, groups, beta=beta, step_end_table=step_end_table,
                                                  micro_batch_size=PrmSection.micro_batch_size)
    mask = groups.rollout.response_mask
    ref_logprob = core.masked_sum(stages.logprob_stage(ref, groups.rollout, PrmSection.micro_batch_size), mask, dim=-1)
    rewards, valid, end_pos = core.step_rewards(log_ratio, mask, stages.step_end_mask(step_end_table, groups.rollout),
                                                beta)
    shape = (len(prompts), n)
    scored = ScoredResponses(
        correct=(groups.labels >= 1.0).long().view(shape), answers=answer_ids(groups.responses, n),
        step_rewards=rewards, step_values=at_step_ends(core.prefix_implicit_values(log_ratio, mask, beta), end_pos,
                                                       valid),
        step_valid=valid, ref_logprob=ref_logprob, tokens=mask.sum(dim=1).view(shape),
        first_wrong=prm_quality.first_wrong_steps(groups.samples, groups.responses).view(shape),
        responses=groups.responses, beta=beta)
    return scored, finite_or_none(metrics)  # NaN (an empty class) is null in JSON


def best_of_n_report(policy_dir: str, prm_dir: str, ref_dir: str, *, task: str, num_prompts: int, n: int,
                     draws: int, seed: int, temperature: float, max_new_tokens: int, beta: float,
                     vote_by: str = "prm_min", device: str = "cpu", dtype: str = "float32",
                     keep_responses: bool = False) -> dict:
    """Sample and score the responses (:func:`score_responses`) and report every selection method at every N
    (module docstring); PRM-weighted voting weighs a response by sigmoid of read-out ``vote_by``.
    ``keep_responses``: also ``responses``, one row per response (:func:`response_rows`)."""
    if vote_by not in READOUTS:
        raise ValueError(f"vote_by must be one of {tuple(READOUTS)}, got {vote_by!r}")
    scored, metrics = score_responses(policy_dir, prm_dir, ref_dir, task=task, num_prompts=num_prompts, n=n,
                                      seed=seed, temperature=temperature, max_new_tokens=max_new_tokens, beta=beta,
                                      device=device, dtype=dtype)
    sizes = [2 ** i for i in range(n.bit_length()) if 2 ** i <= n]
    scores = readout_scores(scored)
    report = selection_report(scored.correct, scores, scored.answers, vote_weights(scored, scores[vote_by]), sizes,
                              draws, seed)
    report["top_pick"] = top_pick_profile(scored, scores)
    if keep_responses:
        report["responses"] = response_rows(scored, scores)
    return report | {"step_auroc": metrics.get("step_auroc"),
                     "first_error_hit_rate": metrics.get("first_error_hit_rate"), "prm_metrics": metrics,
                     "policy": policy_dir, "prm": prm_dir, "ref": ref_dir, "num_prompts": scored.shape[0], "n": n,
                     "draws": draws, "seed": seed, "beta": beta, "vote_by": vote_by}
