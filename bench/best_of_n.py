"""Best-of-N with the PRMs of finished runs, against majority voting, on the same sampled responses.

    python bench/best_of_n.py --runs runs/prm_sweep/confirm-140/ce-lr1e-4-s* --policy SFT_DIR --ref SFT_DIR \
        --out docs/prm_learning/best_of_n

For each run directory, its ``prm/`` ranks ``--n`` responses per held-out prompt sampled from ``--policy``
(the same responses for every run: fixed seed), by the report ``python -m prm_rl.cli.best_of_n`` prints
(:func:`prm_rl.evaluation.best_of_n.best_of_n_report`). Writes OUT.json (every
report), OUT.md (accuracy at each N: mean over runs with min-max, per method) and OUT.png (accuracy against
N, mean over runs, bars = min-max over runs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import mean, pyplot, spread, write_report  # noqa: E402
from prm_rl.config import PrmSection, RolloutSection, TaskSection  # noqa: E402
from prm_rl.evaluation import best_of_n  # noqa: E402


def table(reports: dict[str, dict]) -> str:
    sizes = sorted({int(n) for r in reports.values() for n in r["best_of_n"]["majority"]})
    lines = ["| method | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for method in best_of_n.METHODS:
        cells = [spread([r["best_of_n"][method][n] for r in reports.values()], range_of_one=True) for n in sizes]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    first = next(iter(reports.values()))
    lines.append("| pass@N (oracle) | " + " | ".join(f"{first['pass_at_k'][n]:.3f}" for n in sizes) + " |")
    return "\n".join(lines) + "\n"


def plot(reports: dict[str, dict]):
    plt = pyplot()
    sizes = sorted({int(n) for r in reports.values() for n in r["best_of_n"]["majority"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in best_of_n.METHODS:
        values = [[r["best_of_n"][method][n] for r in reports.values()] for n in sizes]
        average = [mean(v) for v in values]
        ax.errorbar(sizes, average, yerr=[[m - min(v) for m, v in zip(average, values)],
                                          [max(v) - m for m, v in zip(average, values)]], marker="o", capsize=3,
                    label=method)
    first = next(iter(reports.values()))
    ax.plot(sizes, [first["pass_at_k"][n] for n in sizes], "k--", label="pass@N (oracle)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (responses to choose from)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{len(reports)} PRM(s), mean and min-max")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (each with prm/)")
    parser.add_argument("--policy", required=True, help="the model whose responses are chosen from")
    parser.add_argument("--ref", required=True, help="the PRMs' reference model (the runs' SFT model)")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output stem: OUT.json, OUT.md, OUT.png")
    args = parser.parse_args()
    reports = {}
    for run in args.runs:
        reports[run] = best_of_n.best_of_n_report(
            args.policy, str(Path(run) / "prm"), args.ref, task=TaskSection.name, num_prompts=args.num_prompts,
            n=args.n, draws=args.draws, seed=args.seed, temperature=RolloutSection.temperature,
            max_new_tokens=RolloutSection.max_new_tokens, beta=PrmSection.beta)
    reports = json.loads(json.dumps(reports))  # N keys as JSON writes them (strings), as a reader sees them
    for r in reports.values():
        for key in ("best_of_n", "best_of_n_interval"):
            r[key] = {m: {int(n): v for n, v in d.items()} for m, d in r[key].items()}
        r["pass_at_k"] = {int(n): v for n, v in r["pass_at_k"].items()}
    write_report(args.out, reports, table(reports), lambda: plot(reports), dpi=120)


if __name__ == "__main__":
    main()
