"""Do dense rewards pay? Held-out accuracy against steps and seconds for several credit methods, same warm
start and prompts (docs/benchmarks.md):

    python bench/learning_efficiency.py --setting hard --methods rloo prime prime-softmin spro --seeds 0 1 2 \
        --steps 100 --eval-every 20 --parallel 2 --out docs/benchmarks/hard

Each method is ``launch/train.py +recipe=math_ppo`` plus the setting's and the method's overrides (below),
one rank (``trainer.cpu_ranks=1``), the first run alone (it may train the setting's warm start), then
``--parallel`` at a time (one thread each); a finished run directory is reused, so an interrupted benchmark
continues. Per method and seed: the greedy held-out accuracy at every evaluation, the mean seconds per step and
per stage (the first two steps left out: warm-up). For per-step cost alone, run the methods one at a time on an
idle machine: ``--steps 14 --eval-every 0 --parallel 1``. Writes OUT.json (everything), OUT.md (final accuracy
and steps and generated tokens to RLOO's final accuracy, mean and min-max over seeds; seconds per step and its
ratio to RLOO's) and OUT.png (accuracy against steps, seconds and generated tokens, mean over seeds with min-max
bands).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cell, mean, pyplot, run_jobs, spread, train, write_report  # noqa: E402

# The built-in task as the main job has it, or with longer chains: one slip in up to 6 steps decides the
# outcome, the setting where per-step credit should matter most. Responses get room for 6 lines.
SETTINGS: dict[str, list[str]] = {
    "main": [],
    "hard": ["task.arithmetic.min_steps=4", "task.arithmetic.max_steps=6", "rollout.max_new_tokens=96"],
    # at the edge of competence: SFT on chains of 2-6, RL on 5-7 (held-out 0.107 greedy at the start, sampled
    # pass@1 ~0.02-0.03: most groups all wrong); on 8-12 the same SFT answers none (docs/benchmarks.md)
    "edge": ["task.arithmetic.min_steps=5", "task.arithmetic.max_steps=7", "warm_start.chain_steps=[2,6]",
             "rollout.max_new_tokens=112"],
}
METHODS: dict[str, list[str]] = {
    "rloo": ["algorithm.advantage=rloo"],  # outcome only: the baseline every ratio is against
    "grpo": ["algorithm.advantage=grpo"],
    "prime": [],  # the recipe: summed dense implicit rewards
    "prime-min": ["reward.credit=min"],  # PURE's strict min-form credit
    "prime-softmin": ["reward.credit=softmin"],  # PURE's default, T = 0.1
    "spro": ["algorithm.advantage=spro"],  # the policy as its own implicit PRM
    "trl-grpo": ["algorithm.advantage=grpo"],  # TRL's GRPOTrainer on the same job (bench/trl_grpo.py; no filter)
    "prime-paper": [],  # the paper's regime: K=4, PRM lr 2x the policy's, 4 PRM steps (recipe math_ppo_paper)
    "tree": ["algorithm.advantage=tree"],  # RLOO + the group's prefix-tree credit, no PRM
    "prime-tree": ["algorithm.advantage=prime-tree"],  # PRIME + prefix-tree credit
    # the implicit PRM learns per-prefix values (IPVRM's loss at step ends): the outcome, or the tree's value
    "prime-prefix": ["prm.loss=prefix", "prm.targets=outcome", "prm.beta=2.0"],
    "prime-prefix-tree": ["prm.loss=prefix", "prm.targets=tree", "prm.beta=2.0"],
    "prime-tree-prefix-tree": ["algorithm.advantage=prime-tree", "prm.loss=prefix", "prm.targets=tree",
                               "prm.beta=2.0"],
    # policy and PRM as LoRA adapters on one base, also the reference (rank 32 of the model's width 128, alpha 2r),
    # at 10x the recipe's learning rates (adapters move the weights through a low-rank product)
    "prime-lora": ["model.lora.r=32", "prm.lora.r=32", "model.lora.alpha=64", "prm.lora.alpha=64",
                   "policy.learning_rate=2e-4", "prm.learning_rate=1e-3"],
    # oracle controls (the task's step checker as credit: docs/algorithm.md), and RLOO at the band they use
    "rloo-low0": ["algorithm.advantage=rloo", "filter.low=0.0"],  # all-wrong groups kept (they carry no advantage)
    "oracle-steps": ["algorithm.advantage=oracle-steps", "filter.low=0.0"],  # signal in all-wrong groups too
    "oracle-from-error": ["algorithm.advantage=oracle-from-error"],  # wrong responses' correct prefixes spared
    "oracle-error-step": ["algorithm.advantage=oracle-error-step"],  # ... and what follows the error too
    # rollouts that branch (docs/algorithm.md): 4 roots per prompt, each forked once at its highest-entropy step
    # start, K = 8 leaves for fewer generated tokens than 8 independent samples
    "rloo-branch": ["algorithm.advantage=rloo", "rollout.branch.roots=4"],
    "tree-branch": ["algorithm.advantage=tree", "rollout.branch.roots=4"],
    "prime-branch": ["rollout.branch.roots=4"],
    "prime-prefix-tree-branch": ["prm.loss=prefix", "prm.targets=tree", "prm.beta=2.0", "rollout.branch.roots=4"],
    # the same forks at step starts drawn at random: the control for the entropy rule
    "rloo-branch-uniform": ["algorithm.advantage=rloo", "rollout.branch.roots=4", "rollout.branch.by=uniform"],
    "tree-branch-uniform": ["algorithm.advantage=tree", "rollout.branch.roots=4", "rollout.branch.by=uniform"],
}
ENTRY = {"trl-grpo": "bench/trl_grpo.py"}  # every other method: our trainer
RECIPE = {"prime-paper": "math_ppo_paper"}  # every other method: math_ppo
STAGES = ("generate", "verify", "filter", "old_logprobs", "prm", "advantages", "policy")
# Per step: reward hacking (length, repetition), and what the dense rewards do (docs/algorithm.md).
WATCHED = ("response/length_mean", "watch/repeated_4gram_frac", "watch/prm_outcome_corr", "acc/kept_fraction",
           "prm/ranking_acc", "adv/outcome_std", "adv/process_std", "adv/process_outcome_corr", "adv/tree_std",
           "adv/tree_outcome_corr")
# At each evaluation, with prm_eval.num_prompts > 0: the PRM on fresh held-out samples (docs/prm_eval.md), and the
# group's prefix-tree values on the same samples (the free estimate).
PRM_EVAL = ("prm_eval/ranking_acc", "prm_eval/step_auroc", "prm_eval/first_error_hit_rate",
            "prm_eval/first_error_random", "prm_eval/tree_step_auroc", "prm_eval/tree_first_error_hit_rate")


def run_one(setting: str, method: str, seed: int, steps: int, eval_every: int, root: Path,
            common: list[str]) -> dict:
    out = root / f"{method}-s{seed}"
    rows, summary = train(out, ["prm_eval.num_prompts=0", *SETTINGS[setting], *METHODS[method], *common],
                          seed=seed, steps=steps, eval_every=eval_every, entry=ENTRY.get(method, "launch/train.py"),
                          recipe=RECIPE.get(method, "math_ppo"))
    trained = [r for r in rows if "time/step" in r]
    steady = trained[2:] if len(trained) > 4 else trained  # the first steps warm up (allocator, JIT-built ops)
    seconds = [r["time/step"] for r in steady]
    along = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    curve = [(0, summary["eval_accuracy_start"]), *along, (steps, summary["eval_accuracy_final"])]
    drawn = [r.get("rollout/generated_tokens") for r in trained]  # None in runs older than the metric
    tokens = [None if None in drawn else sum(n for r, n in zip(trained, drawn) if r["step"] <= step)
              for step, _ in curve]
    return {"method": method, "seed": seed, "run_dir": str(out), "curve": curve, "tokens": tokens,
            "seconds_per_step": sum(seconds) / len(seconds),
            "stage_seconds": {s: sum(r.get(f"time/{s}", 0.0) for r in steady) / len(steady) for s in STAGES},
            "watch": {k: [r.get(k) for r in trained] for k in WATCHED},
            "prm_eval": [{"step": r["step"], **{k: r[k] for k in PRM_EVAL if k in r}} for r in rows
                         if "prm_eval/ranking_acc" in r]}


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose held-out accuracy reaches ``target``; None if none does."""
    return next((step for step, acc in curve if acc >= target - 1e-9), None)


def tokens_to(run: dict, target: float) -> int | None:
    """Response tokens the run had sampled when its held-out accuracy first reached ``target``; None if it never
    did (or the run predates the metric)."""
    return next((n for (_, acc), n in zip(run["curve"], run.get("tokens", [])) if acc >= target - 1e-9), None)


LAST_EVALS = 3  # a seed's late accuracy: the mean of its last evaluations (each a greedy pass over the held-out set)


def table(results: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    by = {m: [r for r in results if r["method"] == m] for m in methods}
    base_method = "rloo" if "rloo" in by else methods[0]  # the baseline: outcome-only RLOO, else the first method
    base, label = by[base_method], "RLOO" if base_method == "rloo" else base_method
    target = mean(r["curve"][-1][1] for r in base)
    base_steps = [steps_to(r["curve"], target) for r in base]
    base_seconds = mean(r["seconds_per_step"] for r in base)
    base_tokens = mean(tokens_to(r, target) for r in base)
    lines = [f"Target: {label}'s mean final held-out accuracy, {target:.3f}.\n",
             f"| method | seeds | held-out final | mean of the last {LAST_EVALS} evaluations "
             f"| steps to target (per seed) | s/step | s/step vs {label} | steps to target vs {label} "
             f"| seconds to target vs {label} | generated tokens to target vs {label} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        runs = by[m]
        reached = [steps_to(r["curve"], target) for r in runs]
        sec = mean(r["seconds_per_step"] for r in runs)
        mine, theirs = mean(reached), mean(base_steps)  # the mean step of the seeds that reached the target
        steps_ratio = mine / theirs if mine and theirs else None
        seconds = "-" if steps_ratio is None else f"{steps_ratio * sec / base_seconds:.2f}x"
        drawn = mean(tokens_to(r, target) for r in runs)
        tokens = "-" if not drawn or not base_tokens else f"{drawn / base_tokens:.2f}x"
        late = spread([mean(a for _, a in r["curve"][-LAST_EVALS:]) for r in runs])
        lines.append(f"| {m} | {', '.join(str(r['seed']) for r in runs)} | {spread([r['curve'][-1][1] for r in runs])}"
                     f" | {late} | {', '.join('never' if s is None else str(s) for s in reached)} | {sec:.2f} | "
                     f"{sec / base_seconds:.2f}x | {'-' if steps_ratio is None else f'{steps_ratio:.2f}x'} | "
                     f"{seconds} | {tokens} |")
    lines.append(f"\n{label}'s own seeds reach its mean at steps {base_steps} (an evaluation every few steps: the "
                 "step counts are as fine as the evaluation grid). The ratios to target compare the mean step of "
                 f"the seeds that reached it ('-': none did). The mean of each seed's last {LAST_EVALS} evaluations "
                 "(the final one included) is less at the mercy of one evaluation than the final alone.")
    stages = ["| method | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    for m in methods:
        runs = by[m]
        stages.append(f"| {m} | " + " | ".join(f"{mean(r['stage_seconds'][s] for r in runs):.2f}" for s in STAGES)
                      + " |")
    by_stage = "\n\nSeconds per step by stage (mean over steps and seeds):\n\n" + "\n".join(stages)
    return "\n".join(lines) + by_stage + "\n" + dense_reward_table(results)


def _window(values: list, last: bool, size: int = 10) -> float | None:
    """Mean of the first (or last) ``size`` logged values that are numbers."""
    numbers = [v for v in values if v is not None]
    return mean(numbers[-size:] if last else numbers[:size])


def dense_reward_table(results: list[dict]) -> str:
    """What the dense rewards did, for methods that log them: first and last 10 steps, mean over seeds."""
    def dense(r: dict) -> bool:
        return any(v is not None for k in ("adv/process_std", "adv/tree_std") for v in r["watch"].get(k, []))

    methods = [m for m in dict.fromkeys(r["method"] for r in results) if any(dense(r) for r in results
                                                                              if r["method"] == m)]
    if not methods:
        return ""
    keys = ("acc/kept_fraction", "prm/ranking_acc", "watch/prm_outcome_corr", "adv/outcome_std", "adv/process_std",
            "adv/process_outcome_corr", "adv/tree_std", "adv/tree_outcome_corr")
    lines = ["\nDense rewards, first 10 steps -> last 10 steps (mean over seeds; online, on the kept batch):\n",
             "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        cells = [" -> ".join(cell(mean(_window(r["watch"].get(k, []), last) for r in runs)) for last in (False, True))
                 for k in keys]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    evals = [r for r in results if r["method"] in methods and r.get("prm_eval")]
    if evals:
        lines += ["\nThe PRM on fresh held-out samples of the current policy, per evaluation (mean over seeds):\n",
                  "| method | step | " + " | ".join(k.removeprefix("prm_eval/") for k in PRM_EVAL) + " |",
                  "|---" * (len(PRM_EVAL) + 2) + "|"]
        for m in methods:
            runs = [r for r in evals if r["method"] == m]
            for i, point in enumerate(runs[0]["prm_eval"] if runs else []):
                values = [[r["prm_eval"][i].get(k) for r in runs if i < len(r["prm_eval"])] for k in PRM_EVAL]
                # a metric no seed logged (e.g. the tree's, in runs older than it) reads "-", not 0.000
                lines.append(f"| {m} | {point['step']} | " + " | ".join(cell(mean(vs)) for vs in values) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict]):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    methods = list(dict.fromkeys(r["method"] for r in results))
    for i, m in enumerate(methods):
        runs = [r for r in results if r["method"] == m]
        steps = [s for s, _ in runs[0]["curve"]]
        accs = [[r["curve"][j][1] for r in runs] for j in range(len(steps))]
        average = [mean(a) for a in accs]
        sec = mean(r["seconds_per_step"] for r in runs)
        color = plt.cm.tab10(i % 10)
        drawn = [mean(r["tokens"][j] for r in runs) if all(r.get("tokens") and r["tokens"][j] is not None
                                                          for r in runs) else None for j in range(len(steps))]
        panels = [(axes[0], steps), (axes[1], [s * sec for s in steps])]
        if None not in drawn:
            panels.append((axes[2], [n / 1e6 for n in drawn]))
        for ax, xs in panels:
            ax.plot(xs, average, marker="o", color=color, label=f"{m} ({len(runs)} seeds)")
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=color, alpha=0.15)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training seconds (mean s/step x step)")
    axes[2].set_xlabel("generated tokens (millions, mean over seeds)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy (greedy)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="hard")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["rloo", "prime"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "learning_efficiency")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json/.md/.png")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every run, after the setting's and the method's (e.g. a smaller model)")
    args = parser.parse_args()
    root = args.runs / f"{args.setting}-{args.steps}"
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    results = run_jobs(lambda job: run_one(args.setting, *job, args.steps, args.eval_every, root, args.set), jobs,
                       args.parallel)
    write_report(args.out, {"command": " ".join(sys.argv), "results": results}, table(results),
                 lambda: plot(results))


if __name__ == "__main__":
    main()
