"""A finished run evaluated again (the command: ``python -m prm_rl.cli.eval_prm``): its saved config read with
today's defaults, its models found, and its PRM's held-out metrics on fresh samples of a policy.

One process, no DeepSpeed. Every mistake in what was asked for is a :class:`~prm_rl.errors.UsageError`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from prm_rl.config import RECIPES, Config, register_schema, to_config
from prm_rl.errors import UsageError

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


def run_config(run_dir: Path, prm_eval: dict | None = None) -> Config:
    """The run's ``config.yaml`` over today's ``prm_rl/recipes/base.yaml``, so that a run saved before an option existed
    (or was moved: :func:`migrate_legacy`) still loads (a new option takes its default); ``prm_eval`` overrides
    keys of that section."""
    from hydra import compose, initialize_config_dir

    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise UsageError(f"{config_file}: not found (RUN_DIR must be a prm_rl run directory)")
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
            base = compose(config_name="base")
        raw = OmegaConf.merge(base, migrate_legacy(OmegaConf.to_container(OmegaConf.load(config_file))))
    except Exception as err:  # noqa: BLE001 - an unknown or mistyped key, unreadable YAML: one line
        raise UsageError(f"{config_file}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    for key, value in (prm_eval or {}).items():
        raw.prm_eval[key] = value
    return to_config(OmegaConf.to_container(raw))


def model_dirs(run_dir: Path, checkpoint: str | None, policy: str | None, prm: str | None) -> tuple[Path, Path]:
    """(policy, prm) directories: explicit paths win, then the checkpoint's, then the run's final export."""
    if checkpoint:
        base = Path(checkpoint)
        found = base / "policy" / "hf", base / "prm" / "hf"
    else:
        found = run_dir / "policy", run_dir / "prm"
    dirs = Path(policy or found[0]), Path(prm or found[1])
    for name, path in zip(("policy", "prm"), dirs):
        if not (path / "config.json").exists():
            hint = "; a run without a PRM (algorithm.advantage=rloo/grpo) has none: pass --prm DIR" \
                if name == "prm" else ""
            raise UsageError(f"--{name}: no Hugging Face model at {path} (config.json missing){hint}")
    return dirs


def evaluate_saved_prm(cfg: Config, policy_dir: Path, prm_dir: Path, heatmaps: Path | None = None, *,
                       device: str = "cpu", dtype: str | None = None) -> dict:
    """The PRM's held-out metrics (keys: docs/prm_eval.md) and first-error hits by operation, on
    ``prm_eval.num_prompts`` x ``prm_eval.samples_per_prompt`` fresh samples of the policy; ``heatmaps``: also draw
    ``prm_eval.table_rows`` responses into that .png (with .html and .jsonl beside it). The models compute on
    ``device`` in ``dtype`` (None: the run's ``model.dtype``)."""
    import torch

    with torch.no_grad():  # for this call only: the caller's autograd state is its own
        return _evaluate_saved_prm(cfg, policy_dir, prm_dir, heatmaps, device=device, dtype=dtype)


def _evaluate_saved_prm(cfg: Config, policy_dir: Path, prm_dir: Path, heatmaps: Path | None, *, device: str,
                        dtype: str | None) -> dict:
    from prm_rl.data.splits import load_prompt_splits
    from prm_rl.evaluation import prm_quality
    from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint
    from prm_rl.rewards import build_scorer
    from prm_rl.tracking.logger import finite_or_none
    from prm_rl.trainer import stages

    quiet = lambda msg: print(f"[eval_prm] {msg}", file=sys.stderr)  # noqa: E731
    sft = start_checkpoint(cfg, log=quiet)
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or sft)
    settings = cfg.prm_eval
    with build_scorer(cfg.verifier.tasks, num_workers=cfg.verifier.num_workers, timeout_s=cfg.verifier.timeout_s,
                      root="verifier.tasks") as scorer:
        prompts = load_prompt_splits(cfg.data, cfg.task, tokenizer, scorer, quiet).eval[:settings.num_prompts]
        if not prompts:
            raise UsageError("no held-out prompts (data.eval is not set, or prm_eval.num_prompts is 0)")
        placed = dict(device=device, attn_implementation=cfg.model.attn_implementation)
        dtype = dtype or cfg.model.dtype
        policy, prm = (load_causal_lm(str(path), dtype, **placed) for path in (policy_dir, prm_dir))
        groups = prm_quality.sample_heldout(policy, tokenizer, prompts, scorer, settings,
                                            reward=cfg.reward, max_new_tokens=cfg.rollout.max_new_tokens)
    if cfg.prm.reference == "sft":
        ref, ref_temperature = load_causal_lm(sft, dtype, **placed), 1.0
    else:
        ref, ref_temperature = policy, cfg.rollout.temperature
    step_end_table = stages.step_end_table(tokenizer, cfg.reward.step_delimiter)
    metrics, log_ratio = prm_quality.evaluate_prm(prm, ref, groups, beta=cfg.prm.beta, step_end_table=step_end_table,
                                                  micro_batch_size=cfg.prm.micro_batch_size,
                                                  ref_temperature=ref_temperature)
    by_operation = prm_quality.first_error_by_operation(groups, log_ratio, step_end_table, cfg.prm.beta)
    if heatmaps:
        shown = prm_quality.heatmap_rows(groups, log_ratio, tokenizer, step_end_table, cfg.prm.beta,
                                         max(settings.table_rows, 1))
        prm_quality.save_heatmaps(shown, heatmaps.with_suffix(""), png=True)
    return {"metrics": finite_or_none(metrics), "first_error_by_operation": by_operation,
            "policy": str(policy_dir), "prm": str(prm_dir), "reference": cfg.prm.reference,
            "num_prompts": len(prompts), "samples_per_prompt": settings.samples_per_prompt, "seed": settings.seed}
