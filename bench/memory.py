"""Measured per-rank memory of real PRIME runs against ``python -m prm_rl.cli.estimate`` (docs/benchmarks/memory.md):

    OMP_NUM_THREADS=1 python bench/memory.py --out docs/benchmarks/memory
    OMP_NUM_THREADS=1 python bench/memory.py --out docs/benchmarks/memory_lora --stages 0 2 --lora 8

For each ZeRO stage (``--stages``, default 0 1 2 3) and rank count (``--ranks``, default 1 2) it runs
``python launch/train.py +recipe=math_ppo model.path=DIR ... deepspeed.zero_stage=S trainer.cpu_ranks=R`` for
``--steps`` PRIME steps on the CPU, twice: with a randomly initialised model of the built-in architecture
(``--hidden 512 --layers 8 --heads 8 --intermediate 2048``: 33.6M parameters), and with a tiny one (hidden 16,
one layer: a few thousand parameters) whose peak is the process baseline (Python, torch, DeepSpeed, gloo) that the
estimate leaves out. Both models are built with ``build_tiny_model`` + ``build_char_tokenizer`` and saved with
``save_pretrained`` (no SFT warm start); the prompts are the built-in arithmetic task's, from a JSONL file, so the
run needs ``data.*`` (``data.max_prompt_tokens`` is set to the longest prompt, which is what the estimate reads).
The filter is off (a random model solves nothing), so every step trains on the whole batch: 8 prompts x 4
samples x 32 new tokens, micro-batches of 16 sequences.

With ``--lora R`` each stage and rank count also runs with policy and PRM as rank-R LoRA adapters on one base that
is also the reference (not at ZeRO-3, which takes one adapter at most), and a table puts the two side by side.

Measured, per rank: the peak resident memory (``VmHWM`` of ``/proc/PID/status``, polled every 50 ms) read right
after rank 0 logged the last step, i.e. before the final checkpoint and export; the largest over ranks is reported.
The ranks run with ``MALLOC_MMAP_THRESHOLD_=131072`` (see ``FIXED_MMAP``) so that freed tensors leave the resident
set, as freed blocks are reused on a GPU; ``--glibc-default`` measures with glibc's own settings instead.
Also the trainer's own ``mem/<stage>_gb`` (on CPU the resident memory at the end of each stage, largest over ranks
and steps), which misses peaks inside a stage. The estimate is ``prm_rl.trainer.memory.estimate(cfg, R, resident=True)``:
DeepSpeed's reduce bucket counted as far as gradients fill it (a GPU would hold all 500M elements of it; the JSON
also has that GPU figure). Writes OUT.json (everything), OUT.md (tables) and OUT.png (bars).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import pyplot, write_report  # noqa: E402

GIB = 2**30
BASELINE_SHAPE = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32}
# glibc raises its mmap threshold (up to 32 MiB) each time it frees a large block, so activations end up on the
# heap, and what is freed there mostly stays resident: peaks then stack (a later allocation does not reuse the
# freed pages). A fixed threshold keeps every block over 128 KiB an mmap that free() unmaps, as a GPU allocator
# reuses freed blocks, so the resident peak is the peak of live tensors: what the estimate models.
FIXED_MMAP = "MALLOC_MMAP_THRESHOLD_=131072"
JOB = ["rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=32",
       "filter.enabled=false", "policy.micro_batch_size=16", "prm.micro_batch_size=16",
       "policy.mini_batches=1", "prm.mini_batches=1"]


def build_inputs(work: Path, shapes: dict[str, dict[str, int]]) -> tuple[dict[str, Path], Path, int]:
    """Random models of each shape (HF format, char tokenizer beside them), training prompts of the arithmetic task
    as JSONL; returns (model dirs by name, prompt file, longest prompt in tokens)."""
    from prm_rl.data import arithmetic
    from prm_rl.data.sample import encode_prompts
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    dirs = {}
    for name, s in shapes.items():
        shape = TinyModelConfig(hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"],
                                intermediate_size=s["intermediate"])
        dirs[name] = work / "models" / name
        build_tiny_model(shape, tokenizer, seed=0).save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    problems = arithmetic.train_problems(arithmetic.ArithmeticConfig(), 256, seed=0, exclude=set())
    prompts = [arithmetic.prompt_text(p) for p in problems]
    path = work / "models" / "train.jsonl"
    rows = [{"question": q, "final": str(p.answer)} for q, p in zip(prompts, problems)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return dirs, path, max(len(ids) for ids in encode_prompts(tokenizer, prompts))


def overrides(model: Path, prompts: Path, longest: int, stage: int, ranks: int, steps: int, run: Path,
              extra: list[str]) -> list[str]:
    return ["+recipe=math_ppo", f"model.path={model}", f"data.train={prompts}", "data.mapping=fields",
            "+data.fields.prompt=question", "+data.fields.answer=final", "data.task=arithmetic",
            f"data.max_prompt_tokens={longest}", f"deepspeed.zero_stage={stage}", f"trainer.cpu_ranks={ranks}",
            f"trainer.max_steps={steps}", f"trainer.output_dir={run}", "wandb.mode=disabled", "prm_eval.num_prompts=0",
            "trainer.checkpoint_every=0", "trainer.progress_bar=false", "task.eval_size=32", *JOB, *extra]


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (trainer.cpu_ranks' launcher: its children are the ranks)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                out.append(int(entry))
    return sorted(out)


def peak_rss(pid: int) -> int | None:
    """``VmHWM``: the process's peak resident memory so far, in bytes (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def last_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def run_once(args: list[str], ranks: int, steps: int, run: Path, malloc: dict[str, str]) -> dict:
    """One training run, watched: each rank's peak RSS when the last step is logged and at its end."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_SILENT="true", **malloc)
    started = time.time()
    with (run.parent / f"{run.name}.log").open("w") as log:
        log.write(" ".join(["python", "launch/train.py", *args]) + "\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "launch/train.py", *args], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        peaks: dict[int, int] = {}
        at_last_step: dict[int, int] | None = None
        while proc.poll() is None:
            done = last_step(run / "metrics.jsonl") >= steps  # read before the peaks: they then cover the step
            for pid in [proc.pid] if ranks == 1 else child_pids(proc.pid):
                value = peak_rss(pid)
                if value:
                    peaks[pid] = value
            if done and at_last_step is None:
                at_last_step = dict(peaks)
            time.sleep(0.05)
    if proc.returncode != 0 or at_last_step is None or len(at_last_step) != ranks:
        raise RuntimeError(f"{run}: exit {proc.returncode}; see {run.parent / (run.name + '.log')}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stage_mem = [v for r in rows for k, v in r.items() if k.startswith("mem/")]
    shutil.rmtree(run)  # its final checkpoint holds three models and two optimisers: ~1.5 GB a run; the log stays
    return {"peak_rss_per_rank": list(at_last_step.values()), "peak_rss_at_exit_per_rank": list(peaks.values()),
            "peak_rss": max(at_last_step.values()), "stage_mem_max": max(stage_mem) * GIB,
            "seconds": round(time.time() - started, 1)}


def estimated(args: list[str], ranks: int) -> dict:
    from prm_rl.cli.startup import compose
    from prm_rl.trainer.memory import as_dict, estimate

    cfg = compose(args, ranks)
    return {**as_dict(estimate(cfg, ranks, resident=True)), "gpu_device_total": estimate(cfg, ranks).device}


def variants(lora_rank: int) -> dict[str, list[str]]:
    """The runs of each (stage, ranks): full models, and with ``--lora R`` policy and PRM as rank-R adapters on one
    base that is also the reference (prm_rl.models.lora)."""
    return {"full": [], **({"lora": [f"model.lora.r={lora_rank}", f"prm.lora.r={lora_rank}"]} if lora_rank else {})}


def measure(stage: int, ranks: int, variant: str, steps: int, dirs: dict[str, Path], prompts: Path, longest: int,
            work: Path, extra: list[str], malloc: dict[str, str]) -> dict:
    out = {"stage": stage, "ranks": ranks, "variant": variant}
    for name in ("model", "baseline"):
        run = work / f"zero{stage}-{ranks}rank-{variant}-{name}"
        args = overrides(dirs[name], prompts, longest, stage, ranks, steps, run, extra)
        out[name] = {"estimate": estimated(args, ranks), "measured": run_once(args, ranks, steps, run, malloc)}
        print(f"ZeRO-{stage} {ranks} rank(s) {variant} {name}: peak RSS "
              f"{out[name]['measured']['peak_rss'] / GIB:.3f} GiB ({out[name]['measured']['seconds']} s)", flush=True)
    return out


def summary(r: dict) -> dict[str, float]:
    """GiB: the model's estimate, the baseline (the tiny run's measured peak less its own estimate), their sum,
    the measured peak and the trainer's stage-end maximum."""
    est, base_est = (sum(r[name]["estimate"]["total"].values()) for name in ("model", "baseline"))  # device + host
    base = r["baseline"]["measured"]["peak_rss"] - base_est
    measured = r["model"]["measured"]["peak_rss"]
    return {"estimate": est / GIB, "baseline": base / GIB, "predicted": (est + base) / GIB, "measured": measured / GIB,
            "stage_mem": r["model"]["measured"]["stage_mem_max"] / GIB, "ratio": measured / (est + base),
            "model_ratio": (measured - base) / est}


def terms(r: dict) -> dict:
    """The model run's estimate by term, summed over its models (GiB); 'transient' is the largest one and 'of' whose."""
    models = r["model"]["estimate"]["models"].values()
    out = {t: sum(m[t]["device"] for m in models) / GIB for t in ("params", "optimizer")}
    out |= {t: sum(m[t] for m in models) / GIB for t in ("grads", "bucket", "gathered")}
    out["held"] = sum(m["static"]["device"] for m in models) / GIB
    out["transient"] = max(m["transient"] for m in models) / GIB
    out["of"] = max(models, key=lambda m: m["transient"])["name"]
    return out


NOTES = """
How far off, and why (these runs; see prm_rl/trainer/memory.py for each term):

- Agreement at 1 rank, ZeRO 0-2, is partly by construction: two of the estimate's rules were read off runs like
  these and DeepSpeed's source, namely that below ZeRO-3 DeepSpeed frees the gradients after every optimiser step (so
  they are part of an update's transient, not held) and that its reduce bucket leaves no resident trace at stages 1-2
  on CPU. The activation formula was checked separately, against the tensors autograd saves
  (tests/unit/test_estimate.py), and the parameter count against real models.
- 2 ranks, ZeRO 0-2: the estimate is 4-10% high. Each rank runs one micro-batch of 16 rows, so its gradients grow
  while its activations are freed during the backward; the estimate adds both in full (exact when an earlier
  micro-batch's gradients are already held, as with the two micro-batches of 1 rank).
- ZeRO-3: 6-9% high. The estimate holds the whole gathered model (stage3_max_live_parameters) and the part of the
  reduce bucket gradients fill for the run; DeepSpeed releases some of it between uses.
- Not measured here: GPUs (DeepSpeed's reduce bucket, 500M elements, is then allocated whole: the GPU estimate
  column), bf16, offload, gradient checkpointing, grouped-query attention, long sequences. On a GPU add the CUDA
  context and the caching allocator's fragmentation, which the estimate leaves out.
- With glibc's default malloc (--glibc-default) a trial at 1 rank peaked 22-26% higher (ZeRO-0 and 1): freed
  activations stay resident on the heap and later allocations stack on top of them. The trainer's own mem/*_gb,
  resident memory at stage ends, misses the transient peaks by 0.3-0.6 GiB.
"""


def table(results: list[dict], meta: dict) -> str:
    lines = [f"Model: {meta['params'] / 1e6:.1f}M parameters a model ({meta['shape']}), policy + PRM + reference, "
             f"float32, {meta['steps']} steps of 8 prompts x 4 samples x 32 new tokens ({meta['tokens_per_row']} "
             f"tokens a row), micro-batches of 16, on CPU ranks of one thread; malloc: {meta['malloc']}. GiB per "
             "rank. Variant full: three models; lora: policy and PRM as adapters "
             f"({' '.join(variants(meta.get('lora_rank', 0)).get('lora', [])) or 'not run'}) on one base, which is "
             "also the reference.\n",
             "| ZeRO | ranks | variant | estimate | baseline | estimate + baseline | measured peak RSS "
             "| measured / (est. + base.) | (measured - base.) / est. | max mem/*_gb |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = summary(r)
        lines.append(f"| {r['stage']} | {r['ranks']} | {r.get('variant', 'full')} | {s['estimate']:.3f} "
                     f"| {s['baseline']:.3f} "
                     f"| {s['predicted']:.3f} | {s['measured']:.3f} | {s['ratio']:.2f} | {s['model_ratio']:.2f} "
                     f"| {s['stage_mem']:.3f} |")
    ratios = [summary(r)["ratio"] for r in results]
    model_ratios = [summary(r)["model_ratio"] for r in results]
    lines.append(f"\nmeasured / (estimate + baseline): {min(ratios):.2f} to {max(ratios):.2f}; the model-dependent "
                 f"part, (measured - baseline) / estimate: {min(model_ratios):.2f} to {max(model_ratios):.2f}.")
    lines += ["\nThe estimate by term, summed over the models (grads and bucket: held for the run at ZeRO-3, else part "
              "of each model's update, hence of its transient):\n",
              "| ZeRO | ranks | variant | params | optimizer | grads | bucket | gathered | held | largest transient "
              "| of | GPU estimate |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = terms(r)
        lines.append(f"| {r['stage']} | {r['ranks']} | {r.get('variant', 'full')} | " + " | ".join(f"{t[k]:.3f}" for k in (
            "params", "optimizer", "grads", "bucket", "gathered", "held", "transient"))
            + f" | {t['of']} | {r['model']['estimate']['gpu_device_total'] / GIB:.3f} |")
    lines.append("\nmeasured peak RSS: VmHWM of each rank right after the last step was logged (largest over ranks). "
                 "baseline: the same run with a tiny model (its own estimate, under 1 MB, subtracted). max mem/*_gb: "
                 "the trainer's resident memory at the end of each stage, largest over stages, steps and ranks. "
                 "GPU estimate: the same config on GPUs, where DeepSpeed's 500M-element reduce bucket is allocated "
                 "whole for each trained model at stages 1-3.")
    return "\n".join(lines + side_by_side(results)) + "\n" + NOTES


def side_by_side(results: list[dict]) -> list[str]:
    """Full vs LoRA PRIME on the same stage and ranks, measured in the same bench run."""
    full = {(r["stage"], r["ranks"]): r for r in results if r.get("variant", "full") == "full"}
    pairs = [(full[(r["stage"], r["ranks"])], r) for r in results
             if r.get("variant") == "lora" and (r["stage"], r["ranks"]) in full]
    if not pairs:
        return []
    lines = ["\nFull vs LoRA, side by side (GiB per rank; 'model part' is the measured peak less the baseline):\n",
             "| ZeRO | ranks | full: measured | LoRA: measured | LoRA / full | full: model part | LoRA: model part "
             "| LoRA / full (model part) | LoRA: measured / (est. + base.) |", "|---|---|---|---|---|---|---|---|---|"]
    for f, lo in pairs:
        sf, sl = summary(f), summary(lo)
        part_f, part_l = sf["measured"] - sf["baseline"], sl["measured"] - sl["baseline"]
        lines.append(f"| {f['stage']} | {f['ranks']} | {sf['measured']:.3f} | {sl['measured']:.3f} "
                     f"| {sl['measured'] / sf['measured']:.2f} | {part_f:.3f} | {part_l:.3f} | {part_l / part_f:.2f} "
                     f"| {sl['ratio']:.2f} |")
    return lines


def plot(results: list[dict]):
    fig, ax = pyplot().subplots(figsize=(max(6, 1.3 * len(results) + 2), 4))
    for i, r in enumerate(results):
        s, t = summary(r), terms(r)
        parts = [(s["baseline"], "#bbbbbb", "baseline (tiny-model run)"), (t["held"], "#4c72b0", "estimate: held"),
                 (t["transient"], "#dd8452", "estimate: largest transient")]
        bottom = 0.0
        for height, color, label in parts:
            ax.bar(i - 0.2, height, 0.4, bottom=bottom, color=color, label=label if i == 0 else None)
            bottom += height
        ax.bar(i + 0.2, s["measured"], 0.4, color="#55a868", label="measured peak RSS" if i == 0 else None)
        ax.plot([i + 0.02, i + 0.38], [s["stage_mem"]] * 2, color="black", lw=1.5,
                label="max mem/*_gb (stage ends)" if i == 0 else None)
    ax.set_xticks(range(len(results)), [f"ZeRO-{r['stage']}\n{r['ranks']} rank(s)"
                                        + ("\nLoRA" if r.get("variant") == "lora" else "") for r in results])
    ax.set_ylabel("GiB per rank")
    ax.set_title("Estimated vs measured per-rank memory (CPU ranks)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="OUT.json/.md/.png")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "memory_bench", help="models and run directories")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    parser.add_argument("--lora", type=int, default=0, metavar="R",
                        help="also run each stage and rank count with policy and PRM as rank-R LoRA adapters "
                             "(not at ZeRO-3, which takes one adapter at most)")
    parser.add_argument("--glibc-default", action="store_true",
                        help=f"leave glibc's malloc as it is (default: {FIXED_MMAP}, see the module docstring)")
    args = parser.parse_args()
    malloc = {} if args.glibc_default else dict([FIXED_MMAP.split("=")])
    shape = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "intermediate": args.intermediate}
    dirs, prompts, longest = build_inputs(args.work, {"model": shape, "baseline": BASELINE_SHAPE})
    results = [measure(stage, ranks, variant, args.steps, dirs, prompts, longest, args.work, args.set + extra, malloc)
               for ranks in args.ranks for stage in args.stages for variant, extra in variants(args.lora).items()
               if not (variant == "lora" and stage == 3)]
    first = results[0]["model"]["estimate"]
    meta = {"command": " ".join(sys.argv), "shape": shape, "baseline_shape": BASELINE_SHAPE, "steps": args.steps,
            "params": first["params_per_model"], "tokens_per_row": first["tokens_per_row"], "job": JOB,
            "malloc": malloc or "glibc defaults", "lora_rank": args.lora}
    write_report(args.out, {**meta, "results": results}, table(results, meta), lambda: plot(results))


if __name__ == "__main__":
    main()
