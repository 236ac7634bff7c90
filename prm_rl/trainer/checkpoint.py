"""Checkpoints: everything a run needs to continue exactly where it stopped.

``<run_dir>/checkpoints/step_000020/`` holds:

* ``policy/ds``, ``prm/ds``: DeepSpeed states of the trained engines (weights, optimiser, every rank's ZeRO shard)
* ``policy/hf``, ``prm/hf``: Hugging Face export of the weights (``from_pretrained`` loads them)
* ``trainer_state.json``: step, prompt-stream position, guard counters, W&B run id, starting accuracy
* ``buffer.pt``: groups that passed the filter and wait for the next step (``filter.fill_rounds > 1``)
* ``rng/rank_<r>.pt``: every rank's random generator states
* ``config.yaml``: the resolved config it was written under

A checkpoint is written into ``step_N.tmp`` and renamed to ``step_N`` once every rank has finished: the
rename is the commit, so a kill during a save leaves a ``.tmp`` leftover that resume reports, removes and
never loads. ``checkpoints/latest`` then names the newest complete checkpoint, for people and tools.
Collective: every rank calls :func:`save` and :func:`load`; rank 0 does the bookkeeping.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from prm_rl.engine import dist
from prm_rl.models.lora import AdapterView, trainable_parameters
from prm_rl.trainer import run_dir as run_files
from prm_rl.trainer.faults import EXIT_CHECKPOINT, RunStopped

_NAME = re.compile(r"^step_(\d{6,})$")


def root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    base = root(run_dir)
    found = [p for p in base.iterdir() if _NAME.match(p.name) and (p / "trainer_state.json").exists()] \
        if base.is_dir() else []
    return sorted(found, key=step_of)


def find_resume_point(run_dir: Path, resume: str, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to continue from (rank 0 decides): ``auto`` = newest complete one, ``never``, or a path."""
    for leftover in sorted(root(run_dir).glob("step_*.tmp")):
        log(f"ignoring incomplete checkpoint {leftover} (a save was interrupted); removing it")
        shutil.rmtree(leftover, ignore_errors=True)
    existing = complete(run_dir)
    if resume == "never":
        if existing:
            raise RunStopped(f"trainer.resume=never, but {run_dir} already holds checkpoints of a run "
                             f"(newest: {existing[-1].name}); pick another trainer.output_dir or use "
                             "trainer.resume=auto", EXIT_CHECKPOINT)
        return None
    if resume == "auto":
        return existing[-1] if existing else None
    path = Path(resume).expanduser().resolve()
    if not (path / "trainer_state.json").exists():
        raise RunStopped(f"trainer.resume={resume}: not a complete checkpoint (no trainer_state.json)",
                         EXIT_CHECKPOINT)
    return path


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, *, engines: dict[str, Any], tokenizer, trainer_state: dict[str, Any],
         buffer_state: dict[str, Any], rng: dict[str, Any], config: DictConfig, keep: int,
         log: Callable[[str], None]) -> Path:
    """Write checkpoint ``step`` (collective), make it the latest, then delete all but the newest ``keep``."""
    started = time.time()
    final = root(run_dir) / f"step_{step:06d}"
    staging = final.with_name(final.name + ".tmp")
    problem = _prepare(staging, engines) if dist.is_main() else None
    problem = dist.broadcast_object(problem)
    if problem:
        raise RunStopped(f"checkpoint at step {step} not written: {problem}", EXIT_CHECKPOINT)
    dist.barrier()
    try:
        for name, engine in engines.items():
            # a LoRA engine's frozen base is the starting checkpoint's: not saved again, twice, every time
            engine.save_checkpoint(str(staging / name / "ds"), tag="state", save_latest=False,
                                   exclude_frozen_parameters=True)
            run_files.save_hf_model(engine, tokenizer, staging / name / "hf")
        (staging / "rng").mkdir(exist_ok=True)
        torch.save(rng, staging / "rng" / f"rank_{dist.rank()}.pt")
        if dist.is_main():
            torch.save(buffer_state, staging / "buffer.pt")
            (staging / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
            run_files.write_json(staging / "trainer_state.json", trainer_state)  # written last: marks complete
        dist.barrier()
    except OSError as err:  # disk full, quota, permissions: keep the previous checkpoints, stop clearly
        shutil.rmtree(staging, ignore_errors=True)
        raise RunStopped(f"checkpoint at step {step} failed ({err}); the previous checkpoints are intact",
                         EXIT_CHECKPOINT) from err
    if dist.is_main():
        if final.exists():  # resumed from an older checkpoint (trainer.resume=PATH): this branch replaces it
            log(f"replacing {final}, written before the checkpoint this run resumed from")
            shutil.rmtree(final)
        staging.rename(final)  # the commit
        (root(run_dir) / "latest.tmp").write_text(final.name + "\n")
        (root(run_dir) / "latest.tmp").replace(root(run_dir) / "latest")
        for old in complete(run_dir)[:-keep]:
            trash = old.with_name(old.name + ".tmp")  # renamed first: a kill mid-delete leaves only a leftover
            old.rename(trash)
            shutil.rmtree(trash)
        log(f"checkpoint saved: {final} ({time.time() - started:.1f} s)")
    dist.barrier()
    return final


def _prepare(staging: Path, engines: dict[str, Any]) -> str | None:
    """Clear a stale staging folder and check the disk can take a checkpoint; a reason if it cannot."""
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as err:
        return str(err)
    previous = complete(staging.parent.parent)
    if previous:
        needed = sum(f.stat().st_size for f in previous[-1].rglob("*") if f.is_file())
    else:  # trained weights + Adam's two moments + fp32 master copy, and the HF export, per trained model
        def numel(params) -> int:  # ds_numel: the full size of a ZeRO-3 partitioned parameter
            return sum(getattr(p, "ds_numel", p.numel()) for p in params)

        needed = sum(4 * 4 * numel(trainable_parameters(e.module)) + 4 * numel(e.module.parameters())
                     for e in engines.values())
    free = shutil.disk_usage(staging).free
    if free < needed:
        shutil.rmtree(staging, ignore_errors=True)
        return (f"only {free / 2**20:.0f} MiB free on the disk of {staging.parent}, a checkpoint needs about "
                f"{needed / 2**20:.0f} MiB; free space or lower trainer.keep_checkpoints")
    return None


def load(path: Path, engines: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Restore the engines' states (collective); returns (trainer state, buffer state, this rank's RNG state)."""
    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != dist.world_size():
        raise RunStopped(f"checkpoint {path} was written by {state['world_size']} ranks, this run has "
                         f"{dist.world_size()}: resume with the same number of ranks", EXIT_CHECKPOINT)
    for name, engine in engines.items():
        load_path, _ = engine.load_checkpoint(str(path / name / "ds"), tag="state", load_optimizer_states=True,
                                              load_lr_scheduler_states=True,
                                              load_module_strict=not isinstance(engine.module, AdapterView))
        if load_path is None:
            raise RunStopped(f"checkpoint {path}: no DeepSpeed state for {name}", EXIT_CHECKPOINT)
    rng_file = path / "rng" / f"rank_{dist.rank()}.pt"
    buffer_state = torch.load(path / "buffer.pt", weights_only=False)
    return state, buffer_state, torch.load(rng_file, weights_only=False)


def config_changes(path: Path, config: DictConfig) -> list[str]:
    """``key: old -> new`` for every config value that differs from the checkpoint's."""
    old = _flat(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True))
    new = _flat(OmegaConf.to_container(config, resolve=True))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not (isinstance(tree, dict) and tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
