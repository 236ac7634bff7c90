"""Where a training step's time goes, by stage and by operator (docs/benchmarks.md):

    python bench/profile_step.py --out docs/benchmarks/profile [key=value ...]

Builds the trainer ``launch/train.py +recipe=math_ppo`` would build (one rank of one thread, plus the given
overrides, e.g. ``algorithm.advantage=rloo``) in this process, runs ``--warmup`` steps, then ``--steps`` steps
under ``torch.profiler`` (CPU). Every stage is a ``stage/<name>`` range in the profile (``stages.Timings``).
Writes OUT.json (everything), OUT.md (seconds per stage; self CPU time by kind of operator; the top operators;
host syncs, i.e. calls that read a tensor's value back into Python) and OUT.png (the kinds, as a bar chart).
Self times add up without double counting; what is left of the wall time is Python and framework code
between operators (the profiler's own overhead included: it runs slower than an unprofiled step).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import pyplot, write_report  # noqa: E402

# Operator kinds, first match wins (substrings of aten/DeepSpeed operator names).
KINDS = {
    "host sync (.item, .tolist)": ("_local_scalar_dense", "aten::item"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"),
    "attention (SDPA)": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
    "log-probs (log-softmax, logsumexp)": ("softmax", "logsumexp"),
    "optimizer (AdamW, foreach)": ("_foreach", "adam"),
    "copies and indexing": ("aten::copy_", "aten::cat", "aten::index", "aten::gather", "aten::scatter",
                            "aten::clone", "aten::_to_copy", "aten::masked_fill", "aten::nonzero",
                            "aten::where", "aten::stack", "aten::embedding"),
}
OTHER = "elementwise and other"


def kind_of(name: str) -> str:
    return next((kind for kind, parts in KINDS.items() if any(p in name for p in parts)), OTHER)


def build_trainer(overrides: list[str], out: Path):
    from prm_rl.cli.startup import check_overrides
    from prm_rl.config import RECIPES, to_config
    from prm_rl.engine import dist
    from prm_rl.trainer.prime import PrimeTrainer

    raw = check_overrides(RECIPES, "base", [  # composed as launch/train.py composes it
        "+recipe=math_ppo", "trainer.cpu_ranks=1", "wandb.mode=disabled", "prm_eval.num_prompts=0",
        "trainer.progress_bar=false", f"trainer.output_dir={out}", *overrides])
    cfg = to_config(raw)
    dist.init()
    return PrimeTrainer(cfg, raw, name="profile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="OUT.json/.md/.png")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before profiling")
    parser.add_argument("--steps", type=int, default=4, help="steps profiled")
    parser.add_argument("--top", type=int, default=12, help="operators listed by self CPU time")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of +recipe=math_ppo")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    run_dir = tempfile.TemporaryDirectory(prefix="profile-")  # the trainer's run directory, not kept
    trainer = build_trainer(args.overrides, Path(run_dir.name))
    for step in range(1, args.warmup + 1):
        trainer.step(step)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(args.warmup + 1, args.warmup + args.steps + 1):
            trainer.step(step)
    wall = (time.perf_counter() - started) / args.steps
    events = prof.key_averages()
    per_step = 1e-6 / args.steps  # profiler microseconds -> seconds per step
    stages = {e.key.removeprefix("stage/"): e.cpu_time_total * per_step for e in events if e.key.startswith("stage/")}
    ops = [(e.key, e.self_cpu_time_total * per_step, e.count // args.steps) for e in events
           if not e.key.startswith("stage/")]
    kinds: dict[str, float] = {}
    for name, seconds, _ in ops:
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + seconds
    kinds["Python and framework between operators"] = max(0.0, wall - sum(kinds.values()))
    syncs = sum(calls for name, _, calls in ops if kind_of(name) == "host sync (.item, .tolist)")
    top = sorted(ops, key=lambda o: -o[1])[:args.top]
    report = {"command": " ".join(sys.argv), "overrides": args.overrides, "steps": args.steps,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "seconds_per_step": wall,
              "stage_seconds": stages, "kind_seconds": kinds, "host_syncs_per_step": syncs,
              "top_ops": [{"op": n, "seconds": s, "calls": c} for n, s, c in top]}
    write_report(args.out, report, markdown(report), lambda: plot(report))
    trainer.run.close()  # the verifier workers and the logger
    run_dir.cleanup()


def markdown(r: dict) -> str:
    wall = r["seconds_per_step"]
    lines = [f"{r['steps']} profiled steps of `+recipe=math_ppo {' '.join(r['overrides'])}`, one rank, "
             f"{r['threads']} thread(s), torch {r['torch']}: **{wall:.2f} s per step** under the profiler.", "",
             "| stage | s/step | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {v / wall:.0%} |" for k, v in sorted(r["stage_seconds"].items(), key=lambda x: -x[1])]
    lines += ["", "| kind of operator (self CPU time) | s/step | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {v / wall:.0%} |" for k, v in sorted(r["kind_seconds"].items(), key=lambda x: -x[1])]
    lines += ["", f"Host syncs: {r['host_syncs_per_step']} calls per step.", "",
              "| operator | self s/step | calls/step |", "|---|---|---|"]
    lines += [f"| `{o['op']}` | {o['seconds']:.3f} | {o['calls']} |" for o in r["top_ops"]]
    return "\n".join(lines) + "\n"


def plot(r: dict):
    kinds = sorted(r["kind_seconds"].items(), key=lambda x: x[1])
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    ax.barh([k for k, _ in kinds], [v for _, v in kinds])
    ax.set_xlabel("seconds per step (self CPU time)")
    ax.set_title(f"Where a step's {r['seconds_per_step']:.2f} s go")
    return fig


if __name__ == "__main__":
    main()
