"""The GPU check (docs/gpu_check.md): 3 PRIME steps of a random Qwen2-0.5B-shaped model in bf16, on ZeRO-2 and
ZeRO-3 x the hf and vllm engines (vllm with sleep level 2), one run after another:

    bench/gpu_check.sh                 # on the GPU machine: installs the carried wheels, then runs this
    bench/gpu_check.sh --dry-run       # anywhere: the commands and the estimator's figures, no training
    bench/gpu_check.sh --tiny          # on a CPU: one tiny run of one step, end to end (the smoke test)

The model is written on the spot (prm_rl/models/random_init.py, shape ``qwen2.5-0.5b``: hidden 896, 24 layers, 14
heads, 2 KV heads, MLP 4864, vocabulary 151936, tied embeddings) with a byte-level BPE tokenizer trained on the
prompts, which are the built-in arithmetic task's, from a JSONL file (verified in-process: no math_verify). A random
model solves nothing, so the filter is off and every step trains on all 256 responses (32 prompts x 8).

Each run is ``python launch/train.py`` with overrides, in its own process group with a timeout, after
``python -m prm_rl.cli.estimate --json`` with the same overrides. Per run: seconds and tokens/s of each step
(``time/step``, ``perf/tokens_per_second`` in metrics.jsonl); the trainer's peak GPU memory (the largest
``mem/<stage>_gb``: torch's allocated peak, which misses vLLM's own memory pool and the CUDA context); the largest
``memory.used`` nvidia-smi showed while it ran, less what was in use before it (everything on the GPU); the
estimator's device figure; ``rollout/logprob_diff`` on the vllm runs. A run that fails or runs out of time is
recorded with its exit code and the last lines of its log, and the next one starts. Run directories are deleted
after each run (a run's final checkpoint and exports are ~19 GB); metrics.jsonl and the log stay in ``--work``/logs.
Writes OUT.json and OUT.md (default docs/benchmarks/gpu_check).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
H100_GIB = 81559 / 1024  # what nvidia-smi reports for an H100 80GB: the --gpu-gib of a dry run

RUNS = {  # name: (rollout.engine, deepspeed.zero_stage); in this order: one of each engine before ZeRO-3
    "hf-zero2": ("hf", 2), "vllm-zero2": ("vllm", 2), "hf-zero3": ("hf", 3), "vllm-zero3": ("vllm", 3)}
TINY_RUNS = ["hf-zero2"]
# Packages a run imports that the GPU image may lack (bench/gpu_wheels.sh builds them): checked before the runs.
NEEDED = ["deepspeed", "hydra", "omegaconf", "antlr4", "pydantic", "hjson", "transformers", "tokenizers", "torch",
          "safetensors", "vllm"]


@dataclass
class Setting:
    """What the runs train: the model's shape, the batch and the run length."""

    shape: str  # a name in prm_rl.models.random_init.SHAPES
    steps: int
    prompts: int
    samples: int
    max_new_tokens: int
    micro_batch: int
    sleep_level: int  # rollout.vllm.sleep_level (0 on a CPU: sleep mode needs a GPU)


FULL = Setting("qwen2.5-0.5b", steps=3, prompts=32, samples=8, max_new_tokens=128, micro_batch=16, sleep_level=2)
TINY = Setting("test", steps=1, prompts=4, samples=2, max_new_tokens=16, micro_batch=8, sleep_level=0)


# --- inputs --------------------------------------------------------------------------------------------

def rel(path: Path) -> str:
    """``path`` relative to the repository when inside it (the report names no machine paths)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_inputs(work: Path, shape_name: str, weights: bool) -> tuple[Path, Path, int]:
    """The random checkpoint (without weights, just config and tokenizer, when ``weights`` is false: enough for the
    estimator) and 512 arithmetic prompts as JSONL; returns (checkpoint dir, prompt file, longest prompt in tokens)."""
    import torch

    from prm_rl.data import arithmetic
    from prm_rl.data.sample import encode_prompts
    from prm_rl.models.random_init import SHAPES, build_bpe_tokenizer, build_qwen2, write_checkpoint

    problems = arithmetic.train_problems(arithmetic.ArithmeticConfig(), 512, seed=0, exclude=set())
    rows = [{"question": arithmetic.prompt_text(p), "answer": str(p.answer)} for p in problems]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    texts = [r["question"] + r["answer"] for r in rows]
    checkpoint = work / f"model_{shape_name}"
    shutil.rmtree(checkpoint, ignore_errors=True)
    if weights:
        write_checkpoint(checkpoint, texts, shape_name)
    else:
        shape = SHAPES[shape_name]
        tokenizer = build_bpe_tokenizer(texts, min(shape.vocab_size, 50_000))  # as write_checkpoint trains it
        with torch.device("meta"):
            build_qwen2(shape, tokenizer, seed=0).config.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return checkpoint, prompts, max(len(ids) for ids in encode_prompts(tokenizer, [r["question"] for r in rows]))


def overrides(name: str, s: Setting, checkpoint: Path, prompts: Path, longest: int, gpu_share: float,
              run_dir: Path, extra: list[str]) -> list[str]:
    engine, stage = RUNS[name]
    vllm = [f"rollout.vllm.sleep_level={s.sleep_level}", f"rollout.vllm.gpu_memory_utilization={gpu_share}"]
    return ["+recipe=math_ppo", f"model.path={rel(checkpoint)}", "model.dtype=bfloat16",
            f"data.train={rel(prompts)}", "data.mapping=fields", "+data.fields.prompt=question",
            "+data.fields.answer=answer", "data.task=arithmetic", "data.chat_template=false",
            f"data.max_prompt_tokens={longest}", f"rollout.prompts_per_step={s.prompts}",
            f"rollout.samples_per_prompt={s.samples}", f"rollout.max_new_tokens={s.max_new_tokens}",
            "filter.enabled=false", f"policy.micro_batch_size={s.micro_batch}", f"prm.micro_batch_size={s.micro_batch}",
            "prm_eval.num_prompts=0", f"deepspeed.zero_stage={stage}", f"rollout.engine={engine}",
            *(vllm if engine == "vllm" else []), f"trainer.max_steps={s.steps}", "trainer.checkpoint_every=0",
            "trainer.progress_bar=false", "trainer.cpu_ranks=1", "wandb.mode=disabled",
            f"trainer.output_dir={rel(run_dir)}", *extra]


# --- the machine ---------------------------------------------------------------------------------------

def nvidia_smi(query: str) -> list[str] | None:
    """``nvidia-smi --query-gpu=QUERY`` of GPU 0 as strings; None without nvidia-smi or a GPU."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [v.strip() for v in out.stdout.strip().split(",")] if out.returncode == 0 and out.stdout.strip() else None


def gpu_used_gib() -> float | None:
    used = nvidia_smi("memory.used")
    return float(used[0]) / 1024 if used else None


class GpuMemoryWatch:
    """The largest ``memory.used`` of GPU 0 (GiB), polled every ``every`` seconds while the block runs."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = gpu_used_gib()
            if used is not None:
                self.peak = max(self.peak or 0.0, used)
            self._stop.wait(self.every)

    def __enter__(self) -> GpuMemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def version(package: str) -> str | None:
    for name in (package, f"{package}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict:
    """The GPU, the Python packages a run needs (None: not importable here) and the versions of the main ones."""
    import importlib.util

    gpu = nvidia_smi("name,memory.total,driver_version")
    return {"gpu": gpu and {"name": gpu[0], "memory_gib": float(gpu[1]) / 1024, "driver": gpu[2]},
            "python": platform.python_version(),
            "missing": [m for m in NEEDED if importlib.util.find_spec(m) is None],
            "versions": {p: version(p) for p in ("torch", "transformers", "deepspeed", "vllm", "hydra-core", "peft")}}


# --- one run -------------------------------------------------------------------------------------------

def estimate(args: list[str], gpu_gib: float) -> dict:
    """``python -m prm_rl.cli.estimate --json`` of the run's overrides: its JSON (bytes), or the error."""
    cmd = [sys.executable, "-m", "prm_rl.cli.estimate", "--json", "--world-size", "1", "--gpu-gib", f"{gpu_gib:.1f}",
           *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    try:
        est = json.loads(out.stdout)  # exit 1 (does not fit) still prints the JSON
    except json.JSONDecodeError:
        return {"error": f"exit {out.returncode}: " + " | ".join(out.stderr.strip().splitlines()[-5:])}
    return {"device_gib": est["total"]["device"] / GIB, "fits": est["fits"], "json": est}


def stop_group(proc: subprocess.Popen) -> None:
    """Kill what is left of the run's process group (a run out of time; after any run, its verifier workers or a vLLM
    engine process that outlived it), so that the next run starts on a free GPU."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def logged_steps(metrics: Path) -> int:
    try:
        return sum(1 for line in metrics.read_text().splitlines() if line.endswith("}"))
    except OSError:
        return 0


def train(name: str, args: list[str], steps: int, run_dir: Path, logs: Path, timeout: float, tail: int) -> dict:
    """One training run in its own process group; what it logged, how it ended, and when: the first step's row
    (start-up + one step) and the last one's (what follows is the final checkpoint and the exports)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    log, metrics = logs / f"{name}.log", run_dir / "metrics.jsonl"
    cmd = [sys.executable, "launch/train.py", *args]
    before = gpu_used_gib()
    start = time.time()
    first = last = None
    with log.open("w") as stream, GpuMemoryWatch() as watch:
        stream.write(" ".join(["python", *cmd[1:]]) + "\n")
        stream.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
        while (code := proc.poll()) is None and time.time() - start < timeout:
            n = logged_steps(metrics)
            first = first or (time.time() - start if n else None)
            last = last or (time.time() - start if n >= steps else None)
            time.sleep(0.5)
        stop_group(proc)
    seconds = time.time() - start
    status = "timeout" if code is None else "ok" if code == 0 else "failed"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    if metrics.exists():
        shutil.copy(metrics, logs / f"{name}.metrics.jsonl")
    shutil.rmtree(run_dir, ignore_errors=True)
    out = {"status": status, "exit_code": code, "seconds": round(seconds, 1), "steps_logged": len(rows),
           "seconds_to_first_step": first and round(first, 1),
           "seconds_after_last_step": last and round(seconds - last, 1), **measured(rows),
           "gpu_used_before_gib": before, "gpu_used_peak_gib": watch.peak,
           "gpu_used_peak_over_before_gib": None if watch.peak is None or before is None else watch.peak - before,
           "log": rel(log)}
    if status != "ok":
        out["log_tail"] = log.read_text(errors="replace").splitlines()[-tail:]
    return out


def measured(rows: list[dict]) -> dict:
    """Per step: seconds, tokens/s, logprob_diff; their mean over the steps after the first (the first compiles and
    warms up; all steps when there is one); the largest mem/<stage>_gb by stage and overall."""
    def series(key: str) -> list[float]:
        return [r[key] for r in rows if key in r]

    def after_first(values: list[float]) -> float | None:
        return statistics.mean(values[1:] or values) if values else None

    stages = {k: max(r[k] for r in rows if k in r) for k in sorted({k for r in rows for k in r})
              if k.startswith("mem/") and k.endswith("_gb")}
    steps, tokens, diff = series("time/step"), series("perf/tokens_per_second"), series("rollout/logprob_diff")
    return {"step_seconds": steps, "tokens_per_second": tokens, "logprob_diff": diff,
            "step_seconds_after_first": after_first(steps), "tokens_per_second_after_first": after_first(tokens),
            "logprob_diff_max": max(diff) if diff else None,
            "mem_peak_gb": max(stages.values()) if stages else None, "mem_by_stage_gb": stages}


# --- the report ----------------------------------------------------------------------------------------

def num(value, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def table(report: dict) -> str:
    m, s = report["machine"], report["setting"]
    gpu = m["gpu"] and f"{m['gpu']['name']} ({m['gpu']['memory_gib']:.1f} GiB, driver {m['gpu']['driver']})"
    params = report["parameters"] and report["parameters"] / 1e6
    lines = [f"GPU check, {report['mode']}: {gpu or 'no GPU'}; Python {m['python']}, "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
             + (f"; not importable: {', '.join(m['missing'])}" if m["missing"] else "") + ".",
             f"Random Qwen2 of shape `{s['shape']}` ({num(params, '.1f')}M parameters) in bf16, policy + PRM + "
             f"reference, {s['steps']} PRIME step(s) of {s['prompts']} prompts x {s['samples']} samples x "
             f"<= {s['max_new_tokens']} new tokens, micro-batches of {s['micro_batch']}, one rank. Memory in GiB; "
             "seconds and tokens/s: mean over the steps after the first.", "",
             "| run | status | step s | tokens/s | max mem/*_gb | nvidia-smi peak over before | estimate "
             "| logprob_diff max | s to 1st step | s after last step | wall s |", "|---" * 11 + "|"]
    for name, r in report["runs"].items():
        t = r.get("train", {})
        lines.append(f"| {name} | {t.get('status', report['mode'])} | {num(t.get('step_seconds_after_first'))} "
                     f"| {num(t.get('tokens_per_second_after_first'), '.0f')} | {num(t.get('mem_peak_gb'))} "
                     f"| {num(t.get('gpu_used_peak_over_before_gib'))} | {num(r['estimate'].get('device_gib'))} "
                     f"| {num(t.get('logprob_diff_max'), '.2e')} | {num(t.get('seconds_to_first_step'), '.0f')} "
                     f"| {num(t.get('seconds_after_last_step'), '.0f')} | {num(t.get('seconds'), '.0f')} |")
    for name, r in report["runs"].items():
        if "error" in r["estimate"]:
            lines.append(f"\n`{name}` estimate failed: {r['estimate']['error']}")
        if r.get("train", {}).get("log_tail"):
            lines += [f"\n`{name}` {r['train']['status']} (exit {r['train']['exit_code']}), last lines:", "```",
                      *r["train"]["log_tail"][-12:], "```"]
    if report["mode"] == "dry-run":
        lines += ["", "Commands (from the repository root):", "```",
                  *(r["command"] for r in report["runs"].values()), "```"]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the commands and the estimator's figures only")
    mode.add_argument("--tiny", action="store_true", help="one tiny run of one step (CPU is fine): the smoke test")
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help=f"runs to do (default: all; --tiny: {TINY_RUNS})")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "gpu_check", help="OUT.json/.md")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu_check", help="model, prompts, logs")
    parser.add_argument("--timeout", type=float, default=180, help="seconds one run may take")
    parser.add_argument("--budget", type=float, default=420,
                        help="seconds for the whole check: a run gets at most what is left, none under 30 s")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3, help="rollout.vllm.gpu_memory_utilization")
    parser.add_argument("--tail", type=int, default=40, help="log lines kept in the JSON of a run that did not end ok")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    args = parser.parse_args(argv)

    setting = TINY if args.tiny else FULL
    names = args.only or (TINY_RUNS if args.tiny else list(RUNS))
    mode = "dry-run" if args.dry_run else "tiny" if args.tiny else "full"
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(f"gpu_check ({mode}): {json.dumps(info)}", flush=True)
    started = time.time()
    checkpoint, prompts, longest = write_inputs(args.work, setting.shape, weights=not args.dry_run)
    print(f"model and prompts written in {time.time() - started:.0f} s", flush=True)
    gpu_gib = info["gpu"]["memory_gib"] if info["gpu"] else H100_GIB
    plan = {name: overrides(name, setting, checkpoint, prompts, longest, args.gpu_memory_utilization,
                            args.work / "run" / name, args.set) for name in names}
    with ThreadPoolExecutor(len(plan)) as pool:  # CPU-only and independent: at once
        estimates = dict(zip(plan, pool.map(lambda a: estimate(a, gpu_gib), plan.values())))
    runs = {name: {"engine": RUNS[name][0], "zero_stage": RUNS[name][1],
                   "command": "python launch/train.py " + " ".join(plan[name]), "estimate": estimates[name]}
            for name in plan}
    first = next((e["json"] for e in estimates.values() if "json" in e), {})
    report = {"mode": mode, "command": " ".join(["bench/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
              "machine": info, "setting": setting.__dict__, "parameters": first.get("params_per_model"),
              "estimate_gpu_gib": gpu_gib, "runs": runs}
    for name, run in runs.items():
        print(f"{name}: estimate {num(run['estimate'].get('device_gib'))} GiB\n  {run['command']}", flush=True)
        if args.dry_run:
            continue
        left = args.budget - (time.time() - started)
        if left < 30:
            run["train"] = {"status": "skipped", "exit_code": None,
                            "log_tail": [f"not started: {left:.0f} s left of --budget {args.budget:.0f}"]}
            continue
        run["train"] = train(name, plan[name], setting.steps, args.work / "run" / name, logs, min(args.timeout, left),
                             args.tail)
        print(f"{name}: {run['train']['status']} in {run['train']['seconds']} s", flush=True)
    report["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table(report))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
