"""Offline implicit PRMs against majority voting and Monte-Carlo step labels, several losses and seeds:

    python bench/offline_prm.py --losses ce dpo --seeds 0 1 2 --out runs/offline_prm [-- OVERRIDE ...]

For each loss and seed, ``launch/train_prm.py +recipe=prm_math prm.loss=L trainer.seed=S`` (seed: the sampled
training data and its order) into OUT/L-sS; then, on held-out prompts, ``bench/best_of_n.py`` over each loss's
runs (OUT/best_of_n_L.{json,md,png}) and ``python -m prm_rl.cli.mc_values`` with every run beside the Monte-Carlo
baseline on the same responses (OUT/mc_values.json). OUT/summary.md tabulates the step-level side: step AUROC,
first-error hit rate and FLOPs per method, mean and min-max over seeds. Overrides after ``--`` go to every
train_prm run (e.g. ``prm_train.num_prompts=64`` for a short try).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cell, spread  # noqa: E402

NA = "n/a"  # a metric with an empty class (null in the report)


def step_table(report: dict, losses: list[str]) -> str:
    lines = ["| method | step AUROC | first-error hit rate (random) | FLOPs to label these responses | FLOPs, of "
             "which one-off |", "|---|---|---|---|---|"]
    responses = report["responses"]
    mc_flops = report["monte_carlo_cost"]["flops"]
    for name, m in report["monte_carlo"].items():
        mc_hit = cell(m["first_error_hit_rate"], NA)
        lines.append(f"| Monte-Carlo ({name}, K={report['rollouts']}), V_k | {cell(m['step_auroc_value'], NA)} | "
                     f"{mc_hit} ({cell(m['first_error_random'], NA)}) | {mc_flops:.3g} | 0 |")
        lines.append(f"| Monte-Carlo ({name}, K={report['rollouts']}), V_k - V_(k-1) | "
                     f"{cell(m['step_auroc_increment'], NA)} | {mc_hit} | {mc_flops:.3g} | 0 |")
    for loss in losses:
        runs = [r for r in report["implicit_prm"].values() if r["loss"] == loss]
        if not runs:
            continue
        auroc = [r["metrics"]["step_auroc"] for r in runs]
        hit = [r["metrics"]["first_error_hit_rate"] for r in runs]
        total = [r["cost"]["flops"] for r in runs]
        once = [r["cost"]["data_flops"] + r["cost"]["training_flops"] for r in runs]
        lines.append(f"| implicit PRM ({loss}, {len(runs)} seeds) | {spread(auroc, NA, range_of_one=True)} | "
                     f"{spread(hit, NA, range_of_one=True)} | {sum(total) / len(total):.3g} | "
                     f"{sum(once) / len(once):.3g} |")
    return "\n".join(lines) + f"\n\n{responses} held-out responses, {report['prefixes']} step prefixes.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", nargs="+", default=["ce", "dpo"], help="prm.loss values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed values")
    parser.add_argument("--out", type=Path, required=True, help="OUT/L-sS runs and the reports")
    parser.add_argument("--num-prompts", type=int, default=128, help="held-out prompts of best-of-N")
    parser.add_argument("--mc-prompts", type=int, default=64, help="held-out prompts of the Monte-Carlo labels")
    parser.add_argument("--rollouts", type=int, default=8, help="K: Monte-Carlo completions per step prefix")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for every train_prm run")
    args = parser.parse_args()
    runs: dict[str, list[Path]] = {}
    for loss in args.losses:
        for seed in args.seeds:
            run = args.out / f"{loss}-s{seed}"
            subprocess.run([sys.executable, str(REPO / "launch" / "train_prm.py"), "+recipe=prm_math",
                            "trainer.cpu_ranks=1", f"prm.loss={loss}", f"trainer.seed={seed}",
                            f"trainer.output_dir={run}", "wandb.mode=disabled", "trainer.progress_bar=false",
                            *args.overrides], check=True)
            runs.setdefault(loss, []).append(run)
    sft = json.loads((runs[args.losses[0]][0] / "summary.json").read_text())["reference"]
    for loss, dirs in runs.items():
        subprocess.run([sys.executable, str(REPO / "bench" / "best_of_n.py"), "--runs", *map(str, dirs),
                        "--policy", sft, "--ref", sft, "--num-prompts", str(args.num_prompts),
                        "--out", str(args.out / f"best_of_n_{loss}")], check=True)
    every = [str(d) for dirs in runs.values() for d in dirs]
    subprocess.run([sys.executable, "-m", "prm_rl.cli.mc_values", "--policy", sft, "--num-prompts", str(args.mc_prompts),
                    "--rollouts", str(args.rollouts), "--out", str(args.out / "mc_values.json"), "--prm-runs", *every],
                   check=True, stdout=subprocess.DEVNULL)
    table = step_table(json.loads((args.out / "mc_values.json").read_text()), args.losses)
    (args.out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
