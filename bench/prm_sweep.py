"""Sweep PRM settings of the main job and tabulate how well the online PRM learns (docs/prm_learning.md).

One command per sweep, e.g.::

    python bench/prm_sweep.py --grid screen --steps 70 --seeds 0 --parallel 2 --out docs/prm_learning/screen

Each variant is ``launch/train.py +recipe=math_ppo`` plus the variant's overrides (one rank), run with
``trainer.eval_every`` so that ``prm_eval/*`` is measured at the start, along the way and at the end. Writes
``OUT.json`` (every run's evaluations), ``OUT.md`` (a table: mean and min-max over seeds at the last step)
and ``OUT.png`` (the PRM metrics against steps). Runs are independent processes (one thread each), the first
alone (it may train the warm start the others share), then ``--parallel`` at a time; a finished run directory
is reused, so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cell, mean, pyplot, run_jobs, spread, train, write_report  # noqa: E402


def prm(loss: str, lr: str, beta: float = 0.05, mini_batches: int = 1, epochs: int = 1, *extra: str) -> list[str]:
    """Overrides of the ``prm`` section, every one spelled out so that a variant does not depend on the recipe."""
    return [f"prm.loss={loss}", f"prm.learning_rate={lr}", f"prm.beta={beta:g}",
            f"prm.mini_batches={mini_batches}", f"prm.epochs={epochs}", *extra]


# name -> overrides on top of +recipe=math_ppo (the policy side of the recipe is the same in every run).
GRIDS: dict[str, dict[str, list[str]]] = {
    # First round, 70 steps: loss, learning rate, beta, optimiser steps per step, reference.
    "screen": {
        "ce-lr1e-3 (old recipe)": prm("ce", "1e-3"),
        "ce-lr1e-4": prm("ce", "1e-4"),
        "ce-lr1e-5": prm("ce", "1e-5"),
        "ce-lr1e-4-beta0.5": prm("ce", "1e-4", beta=0.5),
        "dpo-lr1e-4": prm("dpo", "1e-4"),
        "dpo-lr1e-5": prm("dpo", "1e-5"),
        "dpo-lr1e-4-beta0.5": prm("dpo", "1e-4", beta=0.5),
        "dpo-lr1e-4-mb4": prm("dpo", "1e-4", mini_batches=4),
        "ce-lr1e-4-ref-policy": prm("ce", "1e-4", 0.05, 1, 1, "prm.reference=policy"),
    },
    # Second round, 70 steps: more PRM updates per step (passes over the kept batch, or more mini-batches).
    "screen2": {
        "ce-lr1e-4-ep4": prm("ce", "1e-4", epochs=4),
        "ce-lr3e-5-ep4": prm("ce", "3e-5", epochs=4),
        "ce-lr3e-4": prm("ce", "3e-4"),
        "ce-lr1e-4-mb4": prm("ce", "1e-4", mini_batches=4),
    },
    # Confirmation at the main job's length, 3 seeds: the old recipe against the cheapest of the best screens.
    "confirm": {
        "ce-lr1e-3 (old recipe)": prm("ce", "1e-3"),
        "ce-lr1e-4": prm("ce", "1e-4"),
    },
    # Follow-up, 140 steps: the PRM (and policy) trained on every sampled group, not only those the
    # accuracy filter keeps: about twice the PRM's data per step.
    "unfiltered": {
        "ce-lr1e-4-no-filter": prm("ce", "1e-4", 0.05, 1, 1, "filter.enabled=false"),
    },
}

KEYS = ("ce", "ce_constant_guess", "outcome_auroc", "ranking_acc", "step_auroc", "first_error_hit_rate",
        "first_error_random", "accuracy")


def run_one(name: str, overrides: list[str], seed: int, steps: int, eval_every: int, root: Path,
            common: list[str]) -> dict:
    out = root / f"{name.split(' ')[0]}-s{seed}"
    rows, summary = train(out, [*common, *overrides], seed=seed, steps=steps, eval_every=eval_every)
    # "prm_eval": samples of the policy at that step; "prm_eval_sft": the starting model's samples, fixed
    evals = {prefix: [{"step": r["step"], **{k: r.get(f"{prefix}/{k}") for k in KEYS}} for r in rows
                      if f"{prefix}/ce" in r] for prefix in ("prm_eval", "prm_eval_sft")}
    trained = [r for r in rows if r.get("prm/loss") is not None]
    # the CE of predicting each batch's mean outcome (0/1 labels): what prm/loss must beat
    constant = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (r["acc/after_filter"] for r in trained)]
    ranking = [r["prm/ranking_acc"] for r in rows if r.get("prm/ranking_acc") is not None]
    return {"variant": name, "overrides": overrides, "seed": seed, "run_dir": str(out), "evals": evals,
            "heldout_start": summary["eval_accuracy_start"], "heldout_final": summary["eval_accuracy_final"],
            "train_prm_loss_mean": sum(r["prm/loss"] for r in trained) / max(len(trained), 1),
            "train_constant_guess_mean": sum(constant) / max(len(constant), 1),
            "train_ranking_acc_mean": sum(ranking) / max(len(ranking), 1),
            "wall_seconds": summary["wall_seconds"]}


def table(results: list[dict], samples: str = "prm_eval") -> str:
    """Mean (min-max over seeds) of the last evaluation on ``samples`` ("prm_eval" or "prm_eval_sft");
    a baseline (constant guess, random pick) follows its metric after "vs", as a mean over seeds."""
    head = ("| variant | seeds | CE vs constant guess | outcome AUROC | ranking acc | step AUROC | first-error hit "
            "vs random | online PRM loss vs constant guess | online ranking acc | held-out acc start -> end |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == name and r["evals"][samples]]
        if not runs:
            continue
        last = [r["evals"][samples][-1] for r in runs]
        get = lambda key: spread(e[key] for e in last)  # noqa: E731
        get_mean = lambda key: cell(mean(e[key] for e in last))  # noqa: E731
        of_runs = lambda key: spread(r[key] for r in runs)  # noqa: E731
        of_runs_mean = lambda key: cell(mean(r[key] for r in runs))  # noqa: E731
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in runs)} "
            f"| {get('ce')} vs {get_mean('ce_constant_guess')} | {get('outcome_auroc')} "
            f"| {get('ranking_acc')} | {get('step_auroc')} "
            f"| {get('first_error_hit_rate')} vs {get_mean('first_error_random')} "
            f"| {of_runs('train_prm_loss_mean')} vs {of_runs_mean('train_constant_guess_mean')} "
            f"| {of_runs('train_ranking_acc_mean')} "
            f"| {of_runs_mean('heldout_start')} -> {of_runs('heldout_final')} |")
    return head + "\n".join(lines) + "\n"


def plot(results: list[dict]):
    plt = pyplot()
    panels = [("ranking_acc", "within-group ranking acc"), ("step_auroc", "step AUROC"),
              ("first_error_hit_rate", "first-error hit rate"), ("ce_gap", "CE - constant-guess CE")]
    sets = [s for s in ("prm_eval", "prm_eval_sft") if any(r["evals"][s] for r in results)]
    titles = {"prm_eval": "current policy's samples", "prm_eval_sft": "starting model's samples"}
    fig, axes = plt.subplots(len(sets), len(panels), figsize=(5 * len(panels), 4 * len(sets)), squeeze=False)
    names = list(dict.fromkeys(r["variant"] for r in results))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for row, samples in zip(axes, sets):
        for ax, (key, title) in zip(row, panels):
            for r in results:
                evals = r["evals"][samples]
                ys = [e["ce"] - e["ce_constant_guess"] if key == "ce_gap" else e[key] for e in evals]
                first_seed = r["seed"] == min(x["seed"] for x in results if x["variant"] == r["variant"])
                ax.plot([e["step"] for e in evals], ys, marker="o", color=colors[r["variant"]], alpha=0.8,
                        label=r["variant"] if first_seed else None)
            ax.set_title(f"{title}\n({titles[samples]})", fontsize=10)
            ax.set_xlabel("PRIME step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="screen", choices=sorted(GRIDS))
    parser.add_argument("--only", nargs="*", help="run only these variants of the grid (first word of the name)")
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--eval-every", type=int, default=35)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "prm_sweep", help="run directories go here")
    parser.add_argument("--out", type=Path, help="OUT.json/.md/.png (default: the runs folder's results.*)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every run, before the variant's own (e.g. a smaller task)")
    args = parser.parse_args()
    grid = {n: o for n, o in GRIDS[args.grid].items() if not args.only or n.split(" ")[0] in args.only}
    if not grid:  # before any run starts (it used to fail in the plot, after writing an empty table)
        names = ", ".join(n.split(" ")[0] for n in GRIDS[args.grid])
        parser.error(f"--only {' '.join(args.only)}: no variant of grid {args.grid!r} has that name ({names})")
    jobs = [(n, o, s) for s in args.seeds for n, o in grid.items()]
    root = args.runs / f"{args.grid}-{args.steps}"
    args.out = args.out or root / "results"
    results = run_jobs(lambda job: run_one(*job, args.steps, args.eval_every, root, args.set), jobs, args.parallel)
    text = "Held-out samples of the policy at the last step:\n\n" + table(results)
    if any(r["evals"]["prm_eval_sft"] for r in results):
        text += "\nHeld-out samples of the starting (SFT) model:\n\n" + table(results, "prm_eval_sft")
    write_report(args.out, {"command": " ".join(sys.argv), "results": results}, text, lambda: plot(results), dpi=100)


if __name__ == "__main__":
    main()
