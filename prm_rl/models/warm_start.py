"""Warm start of the built-in model: supervised fine-tuning on task demonstrations with TRL's SFTTrainer.

PRIME starts RL from an SFT model. The built-in model is trained from scratch on a fixed, limited set of
``warm_start.num_examples`` demonstrations (a data budget, as real SFT sets are), once per distinct config,
and cached under ``warm_start.cache_dir``. The main job's SFT model ships with the package
(``prm_rl/warm_starts/``, named by its config's hash like a cache folder): an SFT's weights depend on the CPU's
float kernels, so a model trained on each machine would start each machine's run elsewhere; the shipped one is the
same start everywhere. Training runs in a child process (``python -m prm_rl.models.warm_start``) so that the
Hugging Face Trainer never sees the DeepSpeed launcher's distributed environment; the cache folder appears
atomically when training is complete.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from prm_rl.data.prompts import BUILTIN_TASKS, TaskConfig, make_task_config, task_generator
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

# Bump when the warm-start procedure changes, so old caches are not reused.
_VERSION = 1
# SFT models that ship with prm_rl, one folder per config hash (the main job's; docs/results.md says how it was made)
SHIPPED = Path(__file__).resolve().parents[1] / "warm_starts"
# Specs of the first built-in task predate task names: a spec without one is this task's (same hash, same cache).
_FIRST_TASK = "arithmetic"


def _spec(tiny: TinyModelConfig, task: TaskConfig, warm: dict, heldout_seed: int, heldout_size: int) -> dict:
    """Everything the warm start depends on; its hash names the cache folder."""
    # chain_steps is in the task's dict already: one SFT task, one hash, whatever RL's chains are; where the
    # model comes from (cache_dir, shipped) is not what it is
    warm = {k: v for k, v in warm.items() if k not in ("cache_dir", "chain_steps", "shipped")}
    spec = {"version": _VERSION, "model": asdict(tiny), "task": asdict(task), "warm_start": warm,
            "heldout_seed": heldout_seed, "heldout_size": heldout_size}
    name = task_generator(task).TASK_NAME
    if name != _FIRST_TASK:
        spec["task_name"] = name
    return spec


def cache_path(cache_dir: str, spec: dict) -> Path:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(cache_dir)) / digest


def shipped_path(spec: dict) -> Path | None:
    """The SFT model shipped with prm_rl for ``spec``, if one is (its recorded spec equal to ``spec``)."""
    path = cache_path(str(SHIPPED), spec)
    if (path / "config.json").exists() and json.loads((path / "warm_start.json").read_text()) == spec:
        return path
    return None


def ensure_warm_start(cache_dir: str, spec: dict, log=print, shipped: bool = True) -> Path:
    """Path of the SFT model for ``spec``: the shipped one (``shipped`` and one matches), else the cached one,
    training it first (in a child process) if missing."""
    if shipped and (packaged := shipped_path(spec)) is not None:
        log(f"warm start: using the SFT model shipped with prm_rl {packaged} (warm_start.shipped=false: your own)")
        return packaged
    path = cache_path(cache_dir, spec)
    if (path / "config.json").exists():
        log(f"warm start: using cached SFT model {path}")
        return path
    log(f"warm start: no cached SFT model for this config; training one now (one-off) -> {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    # The other ranks only wait meanwhile, so SFT may use every core (ranks run with 1 thread each).
    env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    started = time.time()
    subprocess.run([sys.executable, "-m", "prm_rl.models.warm_start", "--out", str(path),
                    "--spec", json.dumps(spec)], env=env, check=True)
    log(f"warm start: SFT finished in {time.time() - started:.0f} s")
    return path


def checkpointing_option(args_class, enabled: bool) -> dict:
    """Activation checkpointing for a TRL config class, which turns it on by default; transformers >= 5.x
    renamed the option and warns about the old name."""
    fields = args_class.__dataclass_fields__
    return {("activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"): enabled}


def train(spec: dict, out: Path) -> None:
    """Train the SFT model described by ``spec`` and move it to ``out`` once complete."""
    import datasets
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # the trainer prints one line for the whole warm start
    name = spec.get("task_name", _FIRST_TASK)
    warm, task = spec["warm_start"], make_task_config(name, spec["task"])
    gen = task_generator(task)
    heldout = gen.heldout_problems(task, spec["heldout_size"], spec["heldout_seed"])
    problems = gen.train_problems(task, warm["num_examples"], warm["seed"],
                                  exclude={p.question for p in heldout})
    data = Dataset.from_list([{"prompt": gen.prompt_text(p), "completion": p.solution} for p in problems])
    tokenizer = build_char_tokenizer(BUILTIN_TASKS[name][1].CHARACTERS)
    model = build_tiny_model(TinyModelConfig(**spec["model"]), tokenizer, seed=warm["seed"])
    staging = out.with_name(out.name + f".tmp-{os.getpid()}")
    args = SFTConfig(
        **checkpointing_option(SFTConfig, False),
        output_dir=str(staging / "trainer"),
        max_steps=warm["max_steps"],
        per_device_train_batch_size=warm["batch_size"],
        learning_rate=warm["learning_rate"],
        lr_scheduler_type=warm["lr_scheduler"],
        warmup_steps=max(1, warm["max_steps"] // 20),
        weight_decay=0.0,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=max(1, warm["max_steps"] // 10),
        save_strategy="no",
        report_to=[],
        seed=warm["seed"],
        data_seed=warm["seed"],
        max_length=spec["model"]["max_positions"],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    try:
        SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "warm_start.json").write_text(json.dumps(spec, indent=2))
        os.replace(staging, out)  # atomic on one filesystem: a half-trained model is never "cached"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the built-in SFT warm start (called by the trainer).")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--spec", required=True, help="JSON spec as built by prm_rl.models.warm_start._spec")
    args = parser.parse_args()
    try:
        train(json.loads(args.spec), args.out)
    except KeyboardInterrupt:  # a terminal's Ctrl-C reaches this child too; the trainer reports it, once
        sys.exit(130)


if __name__ == "__main__":
    main()
