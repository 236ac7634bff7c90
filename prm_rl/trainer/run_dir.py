"""The run directory: what a run leaves behind for people and tools.

``.lock`` (the live run's owner, :mod:`prm_rl.trainer.run_lock`), ``config.yaml`` (resolved config),
``metrics.jsonl`` (one JSON object per step), ``policy/`` and ``prm/`` (Hugging Face format) and
``summary.json`` (``steps``, ``wall_seconds``, ``eval_accuracy_start``, ``eval_accuracy_final``, ``command``,
...). Written by rank 0 only.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import full_parameters
from prm_rl.models.lora import AdapterView
from prm_rl.trainer import run_lock
from prm_rl.trainer.faults import EXIT_CHECKPOINT, RunStopped


def create(output_dir: str | None, name: str, log: Callable[[str], None]) -> Path:
    """Make (rank 0) and agree on (all ranks) the run directory, owned by this run (:mod:`run_lock`).

    Fails fast, with nothing in the directory changed, if it is not writable (:class:`RunStopped`, exit 5)
    or another run owns it (:class:`run_lock.RunDirInUse`, exit 2).
    """
    found = None
    if dist.is_main():
        path = Path(output_dir) if output_dir else Path("runs") / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            run_lock.acquire(path, log)  # held until this process exits
            found = ("ok", str(path.resolve()))
        except run_lock.RunDirInUse as err:
            found = ("in use", str(err))
        except OSError as err:
            found = ("error", f"trainer.output_dir={path}: cannot write there ({err.strerror or err})")
    kind, value = dist.broadcast_object(found)
    if kind == "in use":
        raise run_lock.RunDirInUse(value)
    if kind == "error":
        raise RunStopped(value, EXIT_CHECKPOINT)
    return Path(value)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    if dist.is_main():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def save_hf_model(model, tokenizer, out: Path, adapters: Path | None = None) -> None:
    """Hugging Face export of a (possibly ZeRO-3 sharded) model; collective, rank 0 writes. A LoRA view is
    exported merged (base + adapter: what ``from_pretrained`` and every prm_rl command read) and, given
    ``adapters``, its adapter alone too, as ``adapters/<role>/`` in PEFT's format."""
    with full_parameters(model) as module:
        if dist.is_main():
            module.save_pretrained(out)
            tokenizer.save_pretrained(out)
            if adapters is not None and isinstance(module, AdapterView):
                module.save_adapter(adapters)
    dist.barrier()


def command_line() -> str:
    """The command that started the run, as far as a rank can see it (the launcher's own flags are lost)."""
    launcher = ["python"]
    if "CROSS_RANK" in os.environ:  # set by the deepspeed launcher, not by a plain python start
        launcher = ["deepspeed"] + (["--num_gpus", str(dist.world_size())] if dist.world_size() > 1 else [])
    return " ".join([*launcher, *sys.argv])
