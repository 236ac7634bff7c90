"""Evaluate an implicit PRM on held-out samples of a policy: ``python -m prm_rl.eval_prm RUN_DIR``.

Reads the run's ``config.yaml`` for the task, tokenizer, reference and ``prm_eval.*`` settings; takes the
policy and PRM from the run's final export (``RUN_DIR/policy``, ``RUN_DIR/prm``), from a checkpoint
(``--checkpoint RUN_DIR/checkpoints/step_000040``), or from any Hugging Face directories (``--policy``,
``--prm``). Prints the metrics as JSON (keys: docs/prm_eval.md) and, with ``--out``, writes them there;
``--heatmaps FILE.png`` also draws a few held-out responses coloured by their token rewards (and
``FILE.html``, ``FILE.jsonl`` beside it). One process, no DeepSpeed. Exit 2 with one line on a bad argument.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from prm_rl.config import ConfigError, register_schema, to_config


def _fail(message: str) -> None:
    print(f"eval_prm: {message}", file=sys.stderr)
    sys.exit(2)


# Built-in task knobs that were flat ``task.*`` options before each task got its own section: where each went.
_TASK_KNOBS_MOVED = {"arithmetic": {k: k for k in ("min_steps", "max_steps", "max_operand", "max_factor", "max_value")},
                     "code": {"max_factor": "max_slope", "max_operand": "max_intercept"}}


def migrate_legacy(saved: dict) -> dict:
    """A saved config in today's layout: flat ``task.min_steps`` etc. move under ``task.<name>.*`` (for the code
    task ``max_factor`` was the slope bound and ``max_operand`` the intercept's); knobs of other tasks are dropped;
    ``algorithm.gamma`` became ``algorithm.process_gamma`` and ``algorithm.outcome_gamma`` (both its value)."""
    algorithm = saved.get("algorithm")
    if isinstance(algorithm, dict) and "gamma" in algorithm:
        gamma = algorithm.pop("gamma")
        algorithm.setdefault("process_gamma", gamma)
        algorithm.setdefault("outcome_gamma", gamma)
    task = saved.get("task")
    if isinstance(task, dict):
        moved = _TASK_KNOBS_MOVED.get(task.get("name", "arithmetic"), {})
        for old in _TASK_KNOBS_MOVED["arithmetic"]:
            if old in task and not isinstance(task[old], dict):
                value = task.pop(old)
                if old in moved:
                    task.setdefault(task.get("name", "arithmetic"), {})[moved[old]] = value
    return saved


def _with_current_defaults(saved):
    """The run's saved config over today's ``recipes/base.yaml``, so that a run saved before an option
    existed (or was moved: :func:`migrate_legacy`) still loads (a new option takes its default)."""
    from hydra import compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "recipes"), version_base=None):
        base = compose(config_name="base")
    return OmegaConf.merge(base, migrate_legacy(OmegaConf.to_container(saved)))


def _model_dirs(args) -> tuple[Path, Path]:
    """(policy, prm) directories: explicit flags win, then --checkpoint, then the run's final export."""
    if args.checkpoint:
        base = Path(args.checkpoint)
        policy, prm = base / "policy" / "hf", base / "prm" / "hf"
    else:
        policy, prm = args.run_dir / "policy", args.run_dir / "prm"
    policy, prm = Path(args.policy or policy), Path(args.prm or prm)
    for name, path in (("policy", policy), ("prm", prm)):
        if not (path / "config.json").exists():
            hint = "; a run without a PRM (algorithm.advantage=rloo/grpo) has none: pass --prm DIR" \
                if name == "prm" else ""
            _fail(f"--{name}: no Hugging Face model at {path} (config.json missing){hint}")
    return policy, prm


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m prm_rl.eval_prm", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (its config.yaml is used)")
    parser.add_argument("--checkpoint", help="a checkpoint directory of the run (default: the final export)")
    parser.add_argument("--policy", help="Hugging Face directory of the policy that samples the responses")
    parser.add_argument("--prm", help="Hugging Face directory of the PRM to evaluate")
    parser.add_argument("--num-prompts", type=int, help="override prm_eval.num_prompts")
    parser.add_argument("--samples", type=int, help="override prm_eval.samples_per_prompt")
    parser.add_argument("--seed", type=int, help="override prm_eval.seed")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    parser.add_argument("--heatmaps", type=Path,
                        help="draw prm_eval.table_rows responses into FILE.png (and FILE.html, FILE.jsonl)")
    args = parser.parse_args(argv)

    config_file = args.run_dir / "config.yaml"
    if not config_file.exists():
        _fail(f"{config_file}: not found (RUN_DIR must be a prm_rl run directory)")
    try:
        raw = _with_current_defaults(OmegaConf.load(config_file))
    except Exception as err:  # noqa: BLE001 - an unknown or mistyped key, unreadable YAML: one line, exit 2
        _fail(f"{config_file}: {type(err).__name__}: {str(err).splitlines()[0]}")
    for key, value in (("num_prompts", args.num_prompts), ("samples_per_prompt", args.samples),
                       ("seed", args.seed)):
        if value is not None:
            raw.prm_eval[key] = value
    try:
        cfg = to_config(OmegaConf.to_container(raw))
    except ConfigError as err:
        _fail(f"config error: {err}")
    policy_dir, prm_dir = _model_dirs(args)

    import torch

    from prm_rl.data.splits import load_prompt_splits
    from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint
    from prm_rl.rewards import build_scorer
    from prm_rl.tracking.logger import finite_or_none
    from prm_rl.evaluation import prm_quality
    from prm_rl.trainer import stages

    torch.set_grad_enabled(False)
    quiet = lambda msg: print(f"[eval_prm] {msg}", file=sys.stderr)  # noqa: E731
    sft = start_checkpoint(cfg, log=quiet)
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or sft)
    settings = cfg.prm_eval
    with build_scorer(cfg.verifier.tasks, num_workers=cfg.verifier.num_workers, timeout_s=cfg.verifier.timeout_s,
                      root="verifier.tasks") as scorer:
        prompts = load_prompt_splits(cfg.data, cfg.task, tokenizer, scorer, quiet).eval[:settings.num_prompts]
        if not prompts:
            _fail("no held-out prompts (data.eval is not set, or prm_eval.num_prompts is 0)")
        policy = load_causal_lm(str(policy_dir), cfg.model.dtype)
        prm = load_causal_lm(str(prm_dir), cfg.model.dtype)
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings,
                                         max_new_tokens=cfg.rollout.max_new_tokens)
    if cfg.prm.reference == "sft":
        ref, ref_temperature = load_causal_lm(sft, cfg.model.dtype), 1.0
    else:
        ref, ref_temperature = policy, cfg.rollout.temperature
    step_end_table = stages.step_end_table(tokenizer, cfg.reward.step_delimiter)
    metrics, log_ratio = prm_quality.evaluate_prm(prm, ref, groups, beta=cfg.prm.beta, step_end_table=step_end_table,
                                               micro_batch_size=cfg.prm.micro_batch_size,
                                               ref_temperature=ref_temperature)
    by_operation = prm_quality.first_error_by_operation(groups, log_ratio, step_end_table, cfg.prm.beta)
    result = {"metrics": finite_or_none(metrics), "first_error_by_operation": by_operation,
              "policy": str(policy_dir), "prm": str(prm_dir),
              "reference": cfg.prm.reference,
              "num_prompts": len(prompts), "samples_per_prompt": settings.samples_per_prompt,
              "seed": settings.seed}
    if args.heatmaps:
        shown = prm_quality.heatmap_rows(groups, log_ratio, tokenizer, step_end_table, cfg.prm.beta,
                                      max(settings.table_rows, 1))
        prm_quality.save_heatmaps(shown, args.heatmaps.with_suffix(""), png=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
