"""Best-of-N with the PRMs of finished runs, against majority voting, on the same sampled responses.

    python bench/best_of_n.py --runs runs/prm_sweep/confirm-140/ce-lr1e-4-s* --policy SFT_DIR --ref SFT_DIR \\
        --out docs/prm_learning/best_of_n

For each run directory, its ``prm/`` ranks ``--n`` responses per held-out prompt sampled from ``--policy``
(the same responses for every run and every ``--seeds`` value: each seed its own sample), by the report
``python -m prm_rl.cli.best_of_n`` prints (:func:`prm_rl.evaluation.best_of_n.best_of_n_report`), with the
run's own beta (``summary.json``; the recipe default without one). Writes OUT.json (every report, keyed
``RUN`` or ``RUN@seedS``), OUT.md (accuracy at each N per method: mean over reports with min-max; each method
minus majority voting at the largest N; what each read-out's top pick looks like; with ``--responses`` also the
implicit reward binned by the reference's likelihood), OUT.png (accuracy against N, mean over reports, bars =
min-max) and, with ``--responses``, OUT.responses.jsonl (every scored response, with its report's key).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cell, mean, pyplot, spread, write_report  # noqa: E402
from prm_rl.config import PrmSection, RolloutSection, TaskSection  # noqa: E402
from prm_rl.evaluation import best_of_n  # noqa: E402

LIKELIHOOD_BINS = ((-float("inf"), -8), (-8, -4), (-4, -2), (-2, -1), (-1, 0))  # log pi_ref(y) of a response
PROFILE = ("correct", "steps", "tokens", "answered", "copies", "ref_logprob", "first_wrong_step",
           "rank_correlation_correct", "rank_correlation_steps", "rank_correlation_tokens",
           "rank_correlation_ref_logprob")  # top_pick columns, as the report names them


def accuracy_table(reports: dict[str, dict]) -> str:
    sizes = sorted({int(n) for r in reports.values() for n in r["best_of_n"]["majority"]})
    largest = sizes[-1]
    lines = ["| method | " + " | ".join(f"N={n}" for n in sizes) + f" | N={largest} minus majority |",
             "|---" * (len(sizes) + 2) + "|"]
    for method in best_of_n.METHODS:
        cells = [spread([r["best_of_n"][method][n] for r in reports.values()], range_of_one=True) for n in sizes]
        gaps = [r["vs_majority"][method][largest] for r in reports.values()]
        gap = (f"{gaps[0][0]:+.3f} ({gaps[0][1]:+.3f} to {gaps[0][2]:+.3f})" if len(gaps) == 1 else
               f"{mean(g[0] for g in gaps):+.3f} ({min(g[0] for g in gaps):+.3f} to {max(g[0] for g in gaps):+.3f})")
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gap} |")
    pass_at = [spread([r["pass_at_k"][n] for r in reports.values()], range_of_one=True) for n in sizes]
    lines.append("| pass@N (oracle) | " + " | ".join(pass_at) + " | |")
    one = len(reports) == 1
    return "\n".join(lines) + ("\n\nLast column: " + ("paired bootstrap 95% interval over prompts" if one else
                                                      "mean over reports (min to max)") + ".\n")


def profile_table(reports: dict[str, dict]) -> str:
    rows = ["all", "right", *best_of_n.READOUTS]
    lines = ["| responses | " + " | ".join(PROFILE) + " |", "|---" * (len(PROFILE) + 1) + "|"]
    for row in rows:
        cells = [cell(mean(r["top_pick"][row].get(column) for r in reports.values())) for column in PROFILE]
        lines.append(f"| {row if row in ('all', 'right') else 'top of ' + row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nMean over reports. `top of X`: the highest-scored of all n responses by read-out "
                               "X; first_wrong_step: mean 1-based first wrong step of the wrong ones; "
                               "rank_correlation_*: of the score within a prompt.\n")


def likelihood_table(responses: list[dict]) -> str:
    """The implicit reward q_K (read-out prm_sum) of the responses binned by their reference log-likelihood: q_K
    cannot exceed beta * -log pi_ref(y), so the likely responses (most of the right ones) have no room above 0
    and the unlikely ones spread widely; the top of n scores is drawn from that spread."""
    lines = ["| log pi_ref(y) | responses | right | q_K mean | q_K sd | q_K max | copies of the text |",
             "|---|---|---|---|---|---|---|"]
    for low, high in LIKELIHOOD_BINS:
        rows = [r for r in responses if low <= r["ref_logprob"] < high]
        if not rows:
            continue
        q = [r["prm_sum"] for r in rows]
        sd = (sum((x - mean(q)) ** 2 for x in q) / len(q)) ** 0.5
        lines.append(f"| [{low:g}, {high:g}) | {len(rows)} | {cell(mean(r['correct'] for r in rows))} | "
                     f"{mean(q):+.3f} | {sd:.3f} | {max(q):+.3f} | {mean(r['copies'] for r in rows):.1f} |")
    return "\n".join(lines) + "\n\nAll reports' responses pooled (each PRM's q_K; the texts are the same for every PRM).\n"


def plot(reports: dict[str, dict]):
    plt = pyplot()
    sizes = sorted({int(n) for r in reports.values() for n in r["best_of_n"]["majority"]})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, method in enumerate(best_of_n.METHODS):
        values = [[r["best_of_n"][method][n] for r in reports.values()] for n in sizes]
        average = [mean(v) for v in values]
        ax.errorbar(sizes, average, yerr=[[m - min(v) for m, v in zip(average, values)],
                                          [max(v) - m for m, v in zip(average, values)]], marker="o", capsize=3,
                    color=plt.get_cmap("tab20")(i), label=method)  # more methods than the default 10 colours
    first = next(iter(reports.values()))
    ax.plot(sizes, [first["pass_at_k"][n] for n in sizes], "k--", label="pass@N (oracle)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (responses to choose from)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{len(reports)} report(s), mean and min-max")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def run_beta(run: Path) -> float:
    """The beta the run's PRM was trained with (its summary.json), else the recipe default."""
    summary = run / "summary.json"
    return json.loads(summary.read_text()).get("beta", PrmSection.beta) if summary.exists() else PrmSection.beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (each with prm/)")
    parser.add_argument("--policy", required=True, help="the model whose responses are chosen from")
    parser.add_argument("--ref", required=True, help="the PRMs' reference model (the runs' SFT model)")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="sampling seeds: one sample of responses each")
    parser.add_argument("--vote-by", choices=tuple(best_of_n.READOUTS), default="prm_min",
                        help="read-out whose sigmoid weighs a response in PRM-weighted voting")
    parser.add_argument("--responses", action="store_true", help="also write OUT.responses.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="output stem: OUT.json, OUT.md, OUT.png")
    args = parser.parse_args()
    reports, responses = {}, []
    for run in args.runs:
        for seed in args.seeds:
            key = run if len(args.seeds) == 1 else f"{run}@seed{seed}"
            reports[key] = best_of_n.best_of_n_report(
                args.policy, str(Path(run) / "prm"), args.ref, task=TaskSection.name, num_prompts=args.num_prompts,
                n=args.n, draws=args.draws, seed=seed, temperature=RolloutSection.temperature,
                max_new_tokens=RolloutSection.max_new_tokens, beta=run_beta(Path(run)), vote_by=args.vote_by,
                keep_responses=args.responses)
            responses += [{"report": key} | row for row in reports[key].pop("responses", [])]
    reports = json.loads(json.dumps(reports))  # N keys as JSON writes them (strings), as a reader sees them
    for r in reports.values():
        for key in ("best_of_n", "best_of_n_interval", "vs_majority"):
            r[key] = {m: {int(n): v for n, v in d.items()} for m, d in r[key].items()}
        r["pass_at_k"] = {int(n): v for n, v in r["pass_at_k"].items()}
    if responses:
        best_of_n.write_responses(args.out.with_suffix(".responses.jsonl"), responses)
    markdown = accuracy_table(reports) + "\n### The top pick of all n responses\n\n" + profile_table(reports)
    if responses:
        markdown += "\n### The implicit reward by the reference's likelihood\n\n" + likelihood_table(responses)
    write_report(args.out, reports, markdown, lambda: plot(reports), dpi=120)


if __name__ == "__main__":
    main()
