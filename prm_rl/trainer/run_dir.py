"""The run directory: what a run leaves behind for people and tools.

``.lock`` (the live run's owner, :mod:`prm_rl.trainer.run_lock`), ``config.yaml`` (resolved config),
``metrics.jsonl`` (one JSON object per step), ``policy/`` and ``prm/`` (Hugging Face format) and
``summary.json`` (``steps``, ``wall_seconds``, ``eval_accuracy_start``, ``eval_accuracy_final``, ``command``,
...). Written by rank 0 only, once per run however many nodes it spans: every rank must see the directory
(shared storage), as each writes its own part of every checkpoint there.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prm_rl import CONSOLE_COMMAND
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import gathered, host_weights, unwrap
from prm_rl.models.lora import AdapterView
from prm_rl.trainer import run_lock
from prm_rl.trainer.faults import EXIT_CHECKPOINT, RunStopped


def create(output_dir: str | None, name: str, log: Callable[[str], None]) -> Path:
    """Make (rank 0) and agree on (all ranks) the run directory, owned by this run (:mod:`run_lock`).

    Fails fast, with nothing in the directory changed, if it is not writable (:class:`RunStopped`, exit 5),
    another run owns it (:class:`run_lock.RunDirInUse`, exit 2) or a rank on another node cannot see it (exit 5).
    """
    found = None
    if dist.is_main():
        path = Path(output_dir) if output_dir else Path("runs") / name
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = run_lock.acquire(path, log)  # held until this process exits
            found = ("ok", (str(path.resolve()), lock.owner))
        except run_lock.RunDirInUse as err:
            found = ("in use", str(err))
        except OSError as err:
            found = ("error", f"trainer.output_dir={path}: cannot write there ({err.strerror or err})")
    kind, value = dist.broadcast_object(found)
    if kind == "in use":
        raise run_lock.RunDirInUse(value)
    if kind == "error":
        raise RunStopped(value, EXIT_CHECKPOINT)
    path, owner = Path(value[0]), value[1]
    _check_every_rank_sees(path, owner)
    return path


def _check_every_rank_sees(path: Path, owner: str) -> None:
    """One run directory for the whole run, on storage every node shares: each rank writes its checkpoint shards
    and random state into it, and a resume reads them all back. Rank 0's lock owner (pid, host, start time) is
    this run's alone, so a directory of the same path on a node's own disk does not pass for it."""
    blind = dist.ranks_failing(run_lock.owner_text(path) == owner)
    if blind:
        raise RunStopped(f"trainer.output_dir={path}: rank(s) {', '.join(map(str, blind))} do not see the run "
                         "directory rank 0 made (a disk of their own node?); put it on storage every node mounts "
                         "at the same path", EXIT_CHECKPOINT)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def save_config(run_dir: Path, cfg: DictConfig) -> None:
    if dist.is_main():
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def save_hf_model(model, tokenizer, out: Path, adapters: Path | None = None) -> None:
    """Hugging Face export of a (possibly ZeRO-3 sharded) model; collective: the weights are gathered one at a time
    into rank 0's host memory (:func:`host_weights`) and rank 0 writes them. A LoRA view is exported merged (base +
    adapter: what ``from_pretrained`` and every prm_rl command read) and, given ``adapters``, its adapter alone too,
    as ``adapters/<role>/`` in PEFT's format."""
    weights = host_weights(model)
    module = unwrap(model)
    if dist.is_main():
        checkpoint = module.shared_model if isinstance(module, AdapterView) else module
        checkpoint.save_pretrained(out, state_dict=weights)
        tokenizer.save_pretrained(out)
    if adapters is not None and isinstance(module, AdapterView):
        with gathered(model, module.trainable_parameters()):  # small: the adapter alone
            if dist.is_main():
                module.save_adapter(adapters)
    dist.barrier()


def model_card(role: str, summary: dict[str, Any], config: dict[str, Any]) -> str:
    """The README.md (Hugging Face model card) of an exported model: what it is, what it started from and was
    trained on, for how many steps with which settings, and the run's held-out figures from ``summary``."""
    model, data, task = config["model"], config["data"], config["task"]
    start = model["path"] or "prm_rl's built-in tiny Llama, SFT warm start (`warm_start`)"
    trained_on = f"`{data['train']}`" if data["train"] else f"the built-in `{task['name']}` task"
    what = {"policy": "the policy pi_theta, trained by RL", "prm": "the implicit PRM pi_phi: a causal LM whose "
            "log-likelihood ratio to its reference, times prm.beta, is each token's process reward"}[role]
    section = config[role]
    settings = [("algorithm.advantage", config["algorithm"]["advantage"]), ("steps", summary.get("steps")),
                (f"{role}.learning_rate", section["learning_rate"]),
                (f"{role}.lr_schedule.decay", section["lr_schedule"]["decay"]),
                ("rollout.samples_per_prompt", config["rollout"]["samples_per_prompt"]),
                ("world_size", summary.get("world_size"))]
    figures = [(key, value) for key, value in flat(summary).items() if key not in ("steps", "world_size")
               and isinstance(value, (int, float)) and not isinstance(value, bool)]
    lines = ["---", "library_name: transformers", "tags: [prm_rl, reinforcement-learning, process-reward-model]",
             "---", "", f"# {role} of a prm_rl run", "", f"This is {what}, exported by "
             "prm_rl at the end of its run (`config.yaml` beside this folder holds every "
             "setting).", "", f"- Started from: {start}", f"- Trained on: {trained_on}",
             f"- Command: `{summary.get('command', '')}`", "", "| setting | value |", "|---|---|",
             *(f"| `{k}` | {v} |" for k, v in settings), "", "Held-out figures of the run (summary.json):", "",
             "| figure | value |", "|---|---|", *(f"| `{k}` | {v:.4g} |" for k, v in figures), ""]
    return "\n".join(lines)


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves under dotted keys (``prm_eval_final.prm_eval/ce``)."""
    if not (isinstance(tree, dict) and tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def command_line() -> str:
    """The command that started the run, as far as a rank can see it (the launcher's other flags are lost). A run of
    the installed command has ``sys.argv[0]`` = ``prm-rl COMMAND`` (prm_rl.cli.main): under a launcher, the module
    that runs it."""
    launcher, argv = _launcher(os.environ), sys.argv
    if not argv[0].startswith(f"{CONSOLE_COMMAND} "):
        return " ".join([*launcher, *argv])
    if launcher == ["python"]:
        return " ".join(argv)
    module = ["--module" if launcher[0] == "deepspeed" else "-m", "prm_rl.cli.main"]
    return " ".join([*launcher, *module, argv[0].split(" ", 1)[1], *argv[1:]])


def _launcher(env) -> list[str]:
    if "TORCHELASTIC_RUN_ID" in env:  # torchrun
        return ["torchrun", "--nnodes", env["GROUP_WORLD_SIZE"], "--nproc_per_node", env["LOCAL_WORLD_SIZE"]]
    if "CROSS_RANK" not in env:  # set by the deepspeed launcher, not by a plain python start
        return ["python"]
    if int(env.get("CROSS_SIZE", "1")) > 1:  # deepspeed --hostfile, one launcher per node
        return ["deepspeed", "--num_nodes", env["CROSS_SIZE"], "--num_gpus", env["LOCAL_SIZE"]]
    return ["deepspeed"] + (["--num_gpus", str(dist.world_size())] if dist.world_size() > 1 else [])
