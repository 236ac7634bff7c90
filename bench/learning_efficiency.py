"""Do dense rewards pay? Held-out accuracy against steps and seconds for several credit methods, same warm
start and prompts (docs/benchmarks.md):

    python bench/learning_efficiency.py --setting hard --methods rloo prime prime-softmin spro --seeds 0 1 2 \
        --steps 100 --eval-every 20 --parallel 2 --out docs/benchmarks/hard

Each method is ``launch/train.py +recipe=math_ppo`` plus the setting's and the method's overrides (below),
one rank (``trainer.cpu_ranks=1``), run ``--parallel`` at a time (one thread each); a finished run directory
is reused, so an interrupted benchmark continues. Per method and seed: the greedy held-out accuracy at every
evaluation, the mean seconds per step and per stage (the first two steps left out: warm-up). For per-step cost
alone, run the methods one at a time on an idle machine: ``--steps 14 --eval-every 0 --parallel 1``. Writes OUT.json
(everything), OUT.md (final accuracy and steps to RLOO's final accuracy, mean and min-max over seeds; seconds
per step and its ratio to RLOO's) and OUT.png (accuracy against steps and against seconds, mean over seeds
with min-max bands).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The built-in task as the main job has it, or with longer chains: one slip in up to 6 steps decides the
# outcome, the setting where per-step credit should matter most. Responses get room for 6 lines.
SETTINGS: dict[str, list[str]] = {
    "main": [],
    "hard": ["task.arithmetic.min_steps=4", "task.arithmetic.max_steps=6", "rollout.max_new_tokens=96"],
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
    if not (out / "summary.json").exists():
        cmd = [sys.executable, ENTRY.get(method, "launch/train.py"), f"+recipe={RECIPE.get(method, 'math_ppo')}",
               "trainer.cpu_ranks=1",
               "trainer.checkpoint_every=0", "trainer.progress_bar=false", "wandb.mode=disabled",
               "prm_eval.num_prompts=0", *SETTINGS[setting], *METHODS[method], *common, f"trainer.seed={seed}",
               f"trainer.max_steps={steps}", f"trainer.eval_every={eval_every}", f"trainer.output_dir={out}"]
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with (out / "bench.log").open("w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{method} seed {seed} failed (exit {done.returncode}); see {out / 'bench.log'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    trained = [r for r in rows if "time/step" in r]
    steady = trained[2:] if len(trained) > 4 else trained  # the first steps warm up (allocator, JIT-built ops)
    seconds = [r["time/step"] for r in steady]
    along = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    curve = [(0, summary["eval_accuracy_start"]), *along, (steps, summary["eval_accuracy_final"])]
    return {"method": method, "seed": seed, "run_dir": str(out), "curve": curve,
            "seconds_per_step": sum(seconds) / len(seconds),
            "stage_seconds": {s: sum(r.get(f"time/{s}", 0.0) for r in steady) / len(steady) for s in STAGES},
            "watch": {k: [r.get(k) for r in trained] for k in WATCHED},
            "prm_eval": [{"step": r["step"], **{k: r[k] for k in PRM_EVAL if k in r}} for r in rows
                         if "prm_eval/ranking_acc" in r]}


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose held-out accuracy reaches ``target``; None if none does."""
    return next((step for step, acc in curve if acc >= target - 1e-9), None)


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def _mean_reached(steps: list[int | None]) -> float | None:
    reached = [s for s in steps if s is not None]
    return sum(reached) / len(reached) if reached else None


def table(results: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    by = {m: [r for r in results if r["method"] == m] for m in methods}
    base = by.get("rloo") or by[methods[0]]
    target = sum(r["curve"][-1][1] for r in base) / len(base)
    base_steps = [steps_to(r["curve"], target) for r in base]
    base_seconds = sum(r["seconds_per_step"] for r in base) / len(base)
    lines = [f"Target: RLOO's mean final held-out accuracy, {target:.3f}.\n",
             "| method | seeds | held-out final | steps to target (per seed) | s/step | s/step vs RLOO "
             "| steps to target vs RLOO | seconds to target vs RLOO |", "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        runs = by[m]
        reached = [steps_to(r["curve"], target) for r in runs]
        sec = sum(r["seconds_per_step"] for r in runs) / len(runs)
        mine, theirs = _mean_reached(reached), _mean_reached(base_steps)
        steps_ratio = mine / theirs if mine and theirs else None
        seconds = "-" if steps_ratio is None else f"{steps_ratio * sec / base_seconds:.2f}x"
        lines.append(f"| {m} | {', '.join(str(r['seed']) for r in runs)} | {_spread([r['curve'][-1][1] for r in runs])}"
                     f" | {', '.join('never' if s is None else str(s) for s in reached)} | {sec:.2f} | "
                     f"{sec / base_seconds:.2f}x | {'-' if steps_ratio is None else f'{steps_ratio:.2f}x'} | "
                     f"{seconds} |")
    lines.append(f"\nRLOO's own seeds reach its mean at steps {base_steps} (an evaluation every few steps: the "
                 "step counts are as fine as the evaluation grid). The ratios to target compare the mean step of "
                 "the seeds that reached it ('-': none did).")
    stages = ["| method | " + " | ".join(STAGES) + " |", "|---" * (len(STAGES) + 1) + "|"]
    for m in methods:
        runs = by[m]
        stages.append(f"| {m} | " + " | ".join(f"{sum(r['stage_seconds'][s] for r in runs) / len(runs):.2f}"
                                               for s in STAGES) + " |")
    by_stage = "\n\nSeconds per step by stage (mean over steps and seeds):\n\n" + "\n".join(stages)
    return "\n".join(lines) + by_stage + "\n" + dense_reward_table(results)


def _window(values: list, last: bool, size: int = 10) -> float | None:
    """Mean of the first (or last) ``size`` logged values that are numbers."""
    numbers = [v for v in values if v is not None]
    part = numbers[-size:] if last else numbers[:size]
    return sum(part) / len(part) if part else None


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
        cells = []
        for k in keys:
            ends = [[_window(r["watch"].get(k, []), last) for r in runs] for last in (False, True)]
            ends = [[v for v in e if v is not None] for e in ends]
            cells.append(" -> ".join(f"{sum(e) / len(e):.3f}" if e else "-" for e in ends))
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
                lines.append(f"| {m} | {point['step']} | " + " | ".join(
                    f"{sum(v for v in vs if v is not None) / max(1, sum(v is not None for v in vs)):.3f}"
                    for vs in values) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    methods = list(dict.fromkeys(r["method"] for r in results))
    for i, m in enumerate(methods):
        runs = [r for r in results if r["method"] == m]
        steps = [s for s, _ in runs[0]["curve"]]
        accs = [[r["curve"][j][1] for r in runs] for j in range(len(steps))]
        mean = [sum(a) / len(a) for a in accs]
        sec = sum(r["seconds_per_step"] for r in runs) / len(runs)
        color = plt.cm.tab10(i % 10)
        for ax, xs in ((axes[0], steps), (axes[1], [s * sec for s in steps])):
            ax.plot(xs, mean, marker="o", color=color, label=f"{m} ({len(runs)} seeds)")
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=color, alpha=0.15)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training seconds (mean s/step x step)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy (greedy)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    def run(job: tuple[str, int]) -> dict:
        return run_one(args.setting, *job, args.steps, args.eval_every, root, args.set)

    first = run(jobs[0])  # alone: it may train the setting's warm start, which the others then share
    with ThreadPoolExecutor(args.parallel) as pool:
        rest = list(pool.map(run, jobs[1:]))
    results = [first, *rest]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": " ".join(sys.argv), "results": results},
                                                        indent=1))
    text = table(results)
    args.out.with_suffix(".md").write_text(text)
    plot(results, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
