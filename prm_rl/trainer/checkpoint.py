"""Checkpoints: everything a run needs to continue exactly where it stopped.

``<run_dir>/checkpoints/step_000020/`` holds:

* ``policy/ds``, ``prm/ds``: DeepSpeed states of the trained engines (weights, optimiser, every rank's ZeRO shard)
* ``policy/hf``, ``prm/hf``: Hugging Face export of the weights (``from_pretrained`` loads them), unless
  ``trainer.checkpoint_hf=false``
* ``trainer_state.json``: step, prompt-stream position, guard counters, W&B run id, starting accuracy
* ``buffer.pt``: groups that passed the filter and wait for the next step (``filter.fill_rounds > 1``)
* ``rng/rank_<r>.pt``: every rank's random generator states
* ``config.yaml``: the resolved config it was written under

A checkpoint is written into ``step_N.tmp`` and renamed to ``step_N`` once every rank has finished: the
rename is the commit, so a kill during a save leaves a ``.tmp`` leftover that resume reports, removes and
never loads. ``checkpoints/latest`` then names the newest complete checkpoint, for people and tools.
A checkpoint also resumes on another number of ranks (:func:`load`; docs/checkpoints.md says what stays exact).
Collective: every rank calls :func:`save` and :func:`load`; rank 0 does the bookkeeping.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
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
    """Apply :func:`rng_state`'s states, or, for a rank new to a resized run, seed its fresh streams."""
    shuffle.set_state(state["shuffle"])
    if "seed" in state:
        torch.manual_seed(state["seed"])  # CUDA's generators too
        random.seed(state["seed"])
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, *, engines: dict[str, Any], tokenizer, trainer_state: dict[str, Any],
         buffer_state: dict[str, Any], rng: dict[str, Any], config: DictConfig, keep: int,
         log: Callable[[str], None], hf_export: bool = True) -> Path:
    """Write checkpoint ``step`` (collective), make it the latest, then delete all but the newest ``keep``
    (``hf_export``: with each engine's Hugging Face export, ``trainer.checkpoint_hf``)."""
    started = time.time()
    final = root(run_dir) / f"step_{step:06d}"
    staging = final.with_name(final.name + ".tmp")
    problem = _prepare(staging, engines, hf_export) if dist.is_main() else None
    problem = dist.broadcast_object(problem)
    if problem:
        raise RunStopped(f"checkpoint at step {step} not written: {problem}", EXIT_CHECKPOINT)
    dist.barrier()
    try:
        for name, engine in engines.items():
            # a LoRA engine's frozen base is the starting checkpoint's: not saved again, twice, every time
            engine.save_checkpoint(str(staging / name / "ds"), tag="state", save_latest=False,
                                   exclude_frozen_parameters=True)
            if hf_export:
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


def _prepare(staging: Path, engines: dict[str, Any], hf_export: bool) -> str | None:
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

        needed = sum(4 * 4 * numel(trainable_parameters(e.module)) + 4 * numel(e.module.parameters()) * hf_export
                     for e in engines.values())
    free = shutil.disk_usage(staging).free
    if free < needed:
        shutil.rmtree(staging, ignore_errors=True)
        return (f"only {free / 2**20:.0f} MiB free on the disk of {staging.parent}, a checkpoint needs about "
                f"{needed / 2**20:.0f} MiB; free space or lower trainer.keep_checkpoints")
    return None


def load(path: Path, engines: dict[str, Any], *, run_dir: Path, seed: int,
         log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Restore the engines' states (collective); returns (trainer state, buffer state, this rank's RNG state).

    A checkpoint written by another number of ranks is resumed too (:func:`_load_repartitioned`): weights,
    optimiser moments and step counts come back exactly, re-cut into this run's ZeRO partitions; see
    :func:`_rng_of_this_rank` for the per-rank random streams.
    """
    state = _trainer_state(path)
    saved_ranks = state["world_size"]
    resized = saved_ranks != dist.world_size()
    if resized:
        log(_resize_note(saved_ranks, dist.world_size()))
        _load_repartitioned(path, engines, root(run_dir) / "repartition.tmp")
    else:
        for name, engine in engines.items():
            _load_deepspeed(engine, path / name / "ds")
    buffer_state = torch.load(_existing(path / "buffer.pt"), weights_only=False)
    return state, buffer_state, _rng_of_this_rank(path, saved_ranks, seed=seed, step=state["step"])


def _resize_note(saved_ranks: int, ranks: int) -> str:
    """The one line a run resumed on a different world size logs."""
    streams = f"ranks 0..{min(saved_ranks, ranks) - 1} keep their random streams"
    if ranks > saved_ranks:
        streams += f", ranks {saved_ranks}..{ranks - 1} seed new ones from trainer.seed, the step and the rank"
    return (f"resuming on a different world size: {ranks} ranks, the checkpoint was written by {saved_ranks}; "
            f"weights and optimiser states re-partitioned exactly; {streams}; from here on the samples differ "
            "from those of a run that kept its ranks")


def _trainer_state(path: Path) -> dict[str, Any]:
    file = path / "trainer_state.json"
    try:
        state = json.loads(file.read_text())
    except ValueError as err:
        raise RunStopped(f"checkpoint {file}: not JSON ({err})", EXIT_CHECKPOINT) from err
    missing = [key for key in ("step", "world_size") if key not in state]
    if missing:
        raise RunStopped(f"checkpoint {file}: no {', '.join(missing)} (an older layout?)", EXIT_CHECKPOINT)
    return state


def _existing(file: Path) -> Path:
    if not file.exists():
        raise RunStopped(f"checkpoint file {file} is missing (an older layout, or a copy cut short?)", EXIT_CHECKPOINT)
    return file


def _load_deepspeed(engine, ds_dir: Path) -> None:
    """DeepSpeed's own load of the folder one ``save_checkpoint`` wrote (every rank reads its own partition)."""
    load_path, _ = engine.load_checkpoint(str(ds_dir), tag="state", load_optimizer_states=True,
                                          load_lr_scheduler_states=True,
                                          load_module_strict=not isinstance(engine.module, AdapterView))
    if load_path is None:
        raise RunStopped(f"checkpoint {ds_dir}: no DeepSpeed state", EXIT_CHECKPOINT)


def _load_repartitioned(path: Path, engines: dict[str, Any], scratch: Path) -> None:
    """Load ZeRO states saved by another number of ranks (collective).

    Rank 0 converts each engine's saved partitions into DeepSpeed's universal checkpoint (one file per parameter
    and state: fp32 weight, Adam's two moments, step; ``deepspeed.checkpoint.ds_to_universal``) in ``scratch``;
    every rank then loads its new partition from those files, and ``scratch`` is deleted. ZeRO stage 0 keeps no
    partitions: its states load as they were saved.
    """
    partitioned = {name: e for name, e in engines.items() if e.zero_optimization_stage() > 0}
    problem = _convert_to_universal(path, partitioned, scratch) if dist.is_main() else None
    problem = dist.broadcast_object(problem)
    if problem:
        raise RunStopped(problem, EXIT_CHECKPOINT)
    for name, engine in engines.items():
        if name in partitioned:
            with _universal_load(engine):
                _load_deepspeed(engine, scratch / name)
        else:
            _load_deepspeed(engine, path / name / "ds")
    dist.barrier()
    if dist.is_main():
        shutil.rmtree(scratch, ignore_errors=True)


def _convert_to_universal(path: Path, engines: dict[str, Any], scratch: Path) -> str | None:
    """Write ``scratch/<name>/state/`` for each engine (rank 0); a one-line reason if a checkpoint cannot be read."""
    shutil.rmtree(scratch, ignore_errors=True)  # a conversion killed part-way
    for name in engines:
        saved = path / name / "ds"
        try:
            to_universal(_own_parameters_only(saved, scratch / name / "saved"), scratch / name / "state")
        except Exception as err:  # noqa: BLE001 - whatever the converter trips on, the saved files are not ours
            shutil.rmtree(scratch, ignore_errors=True)
            return (f"checkpoint {saved}: cannot re-partition it for {dist.world_size()} ranks "
                    f"({type(err).__name__}: {err})")
    return None


def _own_parameters_only(saved: Path, staged: Path) -> Path:
    """A copy of the engine's saved folder whose model states hold only the parameters its optimiser trains; the
    optimiser partitions are linked, not copied.

    A LoRA role's module also holds the other role's adapter (trainable, so saved with the module, but trained by
    the other engine). ds_to_universal writes every module tensor without optimiser state to a file of its own, as
    a view that drags its whole flat buffer along: with a 7B model's adapters, tens of GB of scratch.
    """
    (staged / "state").mkdir(parents=True)
    for file in (saved / "state").iterdir():
        if file.name.endswith("model_states.pt"):
            states = torch.load(file, map_location="cpu", weights_only=False)
            own = {name for group in states.get("param_shapes") or [] for name in group}
            states["module"] = {k: v for k, v in (states.get("module") or {}).items() if k in own}
            torch.save(states, staged / "state" / file.name)
        else:
            (staged / "state" / file.name).symlink_to(file.resolve())
    return staged


def to_universal(saved: Path, out: Path) -> Path:
    """DeepSpeed's universal checkpoint of one engine's saved folder (``.../policy/ds``) in ``out``: its ZeRO
    partitions put together, ``out/zero/<parameter>/{fp32,exp_avg,exp_avg_sq[,step]}.pt`` (full tensors), the same
    whatever rank count wrote them. Quiet: the converter's progress lines are dropped."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(saved / "state"), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # our checkpoints predate DeepSpeed's universal metadata
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
    return out


@contextlib.contextmanager
def _universal_load(engine):
    """DeepSpeed's ``checkpoint.load_universal`` for one load. DeepSpeed reads the setting only while loading, so
    switching it on here, rather than in the engine's config, leaves same-size resumes on the direct load."""
    engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        engine._config.load_universal_checkpoint = False


def _rng_of_this_rank(path: Path, saved_ranks: int, *, seed: int, step: int) -> dict[str, Any]:
    """This rank's random generator states.

    The saving run's rank ``r`` wrote ``rng/rank_<r>.pt``; a rank that had none (a run resumed on more ranks)
    starts a fresh stream seeded from (``trainer.seed``, step, rank), so a resized resume is reproducible too.
    The shared shuffling generator is the same on every rank: it comes from rank 0's file.
    """
    rank = dist.rank()
    if rank < saved_ranks:
        return torch.load(_existing(path / "rng" / f"rank_{rank}.pt"), weights_only=False)
    shared = torch.load(_existing(path / "rng" / "rank_0.pt"), weights_only=False)
    return {"seed": _fresh_seed(seed, step, rank), "shuffle": shared["shuffle"]}


def _fresh_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for (run seed, step, rank): a hash, so unrelated to the seed of any other step or rank."""
    digest = hashlib.sha256(f"prm_rl rank stream {seed} {step} {rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def config_changes(path: Path, config: DictConfig) -> list[str]:
    """``key: old -> new`` for every config value that differs from the checkpoint's."""
    old = run_files.flat(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True))
    new = run_files.flat(OmegaConf.to_container(config, resolve=True))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
