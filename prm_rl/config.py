"""Typed schema of the training config.

Values and their documentation live in ``recipes/base.yaml`` (one commented line per option); this module
gives each option its type and its rules. Hydra merges the YAML onto these classes, so an unknown key
(a typo) or a wrong type fails at composition, and :func:`to_config` runs the cross-field rules below
before any model loads, each failing with one line that names the field and the rule.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from prm_rl.data.arithmetic import ArithmeticConfig
from prm_rl.data.code_task import CodeConfig
from prm_rl.errors import ConfigError
from prm_rl.models.tiny import TinyModelConfig

__all__ = ["Config", "ConfigError", "register_schema", "to_config"]


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(options)}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value}: must be > 0")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name}={value}: must be >= 0")


@dataclass
class ModelSection:
    path: Optional[str] = MISSING
    tokenizer_path: Optional[str] = MISSING
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)  # the built-in model's shape (models/tiny.py)
    dtype: str = MISSING
    gradient_checkpointing: bool = MISSING

    def check(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        # What model.path and model.tokenizer_path name is checked by models.loading.check_model_source.


@dataclass
class WarmStartSection:
    cache_dir: str = MISSING
    num_examples: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    lr_scheduler: str = MISSING
    seed: int = MISSING

    def check(self) -> None:
        for name in ("num_examples", "max_steps", "batch_size", "learning_rate"):
            _positive(f"warm_start.{name}", getattr(self, name))
        _choice("warm_start.lr_scheduler", self.lr_scheduler, ("cosine", "constant_with_warmup", "linear"))


@dataclass
class TaskSection:
    name: str = MISSING
    # One section per built-in task: its generator's own config class (prm_rl/data/), knobs and defaults.
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    train_size: int = MISSING
    eval_size: int = MISSING
    seed: int = MISSING

    def check(self) -> None:
        from prm_rl.data.prompts import BUILTIN_TASKS

        _choice("task.name", self.name, tuple(BUILTIN_TASKS))
        self.selected.check()
        _positive("task.eval_size", self.eval_size)
        _positive("task.train_size", self.train_size)

    @property
    def selected(self) -> ArithmeticConfig | CodeConfig:
        """The config of the task ``task.name`` picks."""
        return getattr(self, self.name)


@dataclass
class DataSection:
    train: Optional[str] = MISSING
    eval: Optional[str] = MISSING
    format: str = MISSING
    split: str = MISSING
    mapping: str = MISSING
    fields: dict[str, str] = field(default_factory=dict)
    task: Optional[str] = MISSING
    instruction: str = MISSING
    chat_template: bool = MISSING
    max_prompt_tokens: int = MISSING
    max_rows: Optional[int] = MISSING

    def check(self) -> None:
        from prm_rl.data.files import FORMATS
        from prm_rl.data.mappings import MAPPINGS

        _choice("data.format", self.format, FORMATS)
        _choice("data.mapping", self.mapping, MAPPINGS)
        _positive("data.max_prompt_tokens", self.max_prompt_tokens)
        if self.max_rows is not None:
            _positive("data.max_rows", self.max_rows)
        if self.mapping == "fields" and "prompt" not in self.fields:
            raise ConfigError("data.fields: mapping=fields needs at least +data.fields.prompt=KEY")
        if self.eval is not None and self.train is None:
            raise ConfigError(f"data.eval={self.eval}: set data.train too (or neither, for the built-in task)")
        for name in ("train", "eval"):
            value = getattr(self, name)
            if value is not None and not os.path.exists(os.path.expanduser(value)):
                raise ConfigError(f"data.{name}={value}: no such file or directory")


@dataclass
class VerifierSection:
    num_workers: int = MISSING
    timeout_s: float = MISSING
    tasks: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        _positive("verifier.num_workers", self.num_workers)
        _positive("verifier.timeout_s", self.timeout_s)


@dataclass
class RolloutSection:
    prompts_per_step: int = MISSING
    samples_per_prompt: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    max_new_tokens: int = MISSING
    eval_batch_size: int = MISSING

    def check(self) -> None:
        _positive("rollout.prompts_per_step", self.prompts_per_step)
        _positive("rollout.samples_per_prompt", self.samples_per_prompt)
        _positive("rollout.eval_batch_size", self.eval_batch_size)
        _positive("rollout.temperature", self.temperature)
        _positive("rollout.max_new_tokens", self.max_new_tokens)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p={self.top_p}: must be in (0, 1]")


@dataclass
class FilterSection:
    enabled: bool = MISSING
    low: float = MISSING
    high: float = MISSING
    drop_truncated: bool = MISSING
    fill_rounds: int = MISSING

    def check(self) -> None:
        if not 0 <= self.low <= self.high <= 1:
            raise ConfigError(f"filter.low={self.low}, filter.high={self.high}: need 0 <= low <= high <= 1")
        _positive("filter.fill_rounds", self.fill_rounds)


@dataclass
class PrmSection:
    update: str = MISSING
    loss: str = MISSING
    reference: str = MISSING
    beta: float = MISSING
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    mini_batches: int = MISSING
    micro_batch_size: int = MISSING
    epochs: int = MISSING

    def check(self) -> None:
        from prm_rl.core import PRM_LOSSES  # torch: imported only when a config is validated

        _choice("prm.update", self.update, ("none", "after", "before"))
        _positive("prm.epochs", self.epochs)
        _choice("prm.loss", self.loss, tuple(PRM_LOSSES))
        _choice("prm.reference", self.reference, ("sft", "policy"))
        _positive("prm.beta", self.beta)
        _positive("prm.learning_rate", self.learning_rate)
        _non_negative("prm.weight_decay", self.weight_decay)
        _positive("prm.grad_clip", self.grad_clip)
        _positive("prm.mini_batches", self.mini_batches)
        _positive("prm.micro_batch_size", self.micro_batch_size)


@dataclass
class PrmEvalSection:
    num_prompts: int = MISSING
    samples_per_prompt: int = MISSING
    temperature: float = MISSING
    seed: int = MISSING
    table_rows: int = MISSING

    def check(self) -> None:
        if self.num_prompts < 0:
            raise ConfigError(f"prm_eval.num_prompts={self.num_prompts}: must be >= 0 (0 = no PRM evaluation)")
        if self.samples_per_prompt < 2:
            raise ConfigError(f"prm_eval.samples_per_prompt={self.samples_per_prompt}: within-group ranking needs "
                              "at least 2")
        _positive("prm_eval.temperature", self.temperature)
        if self.table_rows < 0:
            raise ConfigError(f"prm_eval.table_rows={self.table_rows}: must be >= 0")


@dataclass
class RewardSection:
    granularity: str = MISSING
    step_delimiter: str = MISSING
    scale_by_beta: bool = MISSING
    normalize: str = MISSING
    reward_eos: bool = MISSING
    process_coef: float = MISSING
    outcome_coef: float = MISSING

    def check(self) -> None:
        from prm_rl.core import GRANULARITIES

        _choice("reward.granularity", self.granularity, GRANULARITIES)
        _choice("reward.normalize", self.normalize, ("batch_max_return", "none"))


@dataclass
class AlgorithmSection:
    advantage: str = MISSING
    gamma: float = MISSING
    whiten: bool = MISSING

    def check(self) -> None:
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        _choice("algorithm.advantage", self.advantage, tuple(ADVANTAGE_ESTIMATORS))

    @property
    def uses_prm(self) -> bool:
        """The estimator takes the PRM's dense rewards: the run builds and trains a PRM."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].uses_prm


@dataclass
class PolicySection:
    learning_rate: float = MISSING
    weight_decay: float = MISSING
    grad_clip: float = MISSING
    clip_eps: float = MISSING
    dual_clip: Optional[float] = MISSING
    kl_coef: float = MISSING
    kl_estimator: str = MISSING
    entropy_coef: float = MISSING
    loss_agg: str = MISSING
    ppo_epochs: int = MISSING
    mini_batches: int = MISSING
    micro_batch_size: int = MISSING

    def check(self) -> None:
        _positive("policy.learning_rate", self.learning_rate)
        _non_negative("policy.weight_decay", self.weight_decay)
        _positive("policy.grad_clip", self.grad_clip)
        _positive("policy.clip_eps", self.clip_eps)
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ConfigError(f"policy.dual_clip={self.dual_clip}: must be > 1 (or null to disable)")
        from prm_rl.core import KL_ESTIMATORS, LOSS_AGGREGATIONS

        _choice("policy.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("policy.loss_agg", self.loss_agg, LOSS_AGGREGATIONS)
        _positive("policy.ppo_epochs", self.ppo_epochs)
        _positive("policy.mini_batches", self.mini_batches)
        _positive("policy.micro_batch_size", self.micro_batch_size)


@dataclass
class DeepSpeedSection:
    zero_stage: int = MISSING
    offload: bool = MISSING

    def check(self) -> None:
        _choice("deepspeed.zero_stage", str(self.zero_stage), ("0", "1", "2", "3"))


@dataclass
class TrainerSection:
    max_steps: int = MISSING
    seed: int = MISSING
    output_dir: Optional[str] = MISSING
    eval_every: int = MISSING
    progress_bar: bool = MISSING
    resume: str = MISSING
    checkpoint_every: int = MISSING
    keep_checkpoints: int = MISSING
    max_bad_steps: int = MISSING

    def check(self) -> None:
        _positive("trainer.max_steps", self.max_steps)
        if self.checkpoint_every < 0:
            raise ConfigError(f"trainer.checkpoint_every={self.checkpoint_every}: must be >= 0 (0 = only at the end)")
        _positive("trainer.keep_checkpoints", self.keep_checkpoints)
        _positive("trainer.max_bad_steps", self.max_bad_steps)
        if self.resume not in ("auto", "never") and not os.path.isdir(os.path.expanduser(self.resume)):
            raise ConfigError(f"trainer.resume={self.resume}: must be auto, never, or an existing checkpoint directory")


@dataclass
class WandbSection:
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING
    name: Optional[str] = MISSING

    def check(self) -> None:
        _choice("wandb.mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    task: TaskSection = field(default_factory=TaskSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    verifier: VerifierSection = field(default_factory=VerifierSection)
    filter: FilterSection = field(default_factory=FilterSection)
    prm: PrmSection = field(default_factory=PrmSection)
    prm_eval: PrmEvalSection = field(default_factory=PrmEvalSection)
    reward: RewardSection = field(default_factory=RewardSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    policy: PolicySection = field(default_factory=PolicySection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    wandb: WandbSection = field(default_factory=WandbSection)

    def check(self, world_size: int = 1) -> None:
        """Run every section's rules, then the rules that span sections."""
        for section in vars(self).values():
            section.check()
        k = self.rollout.samples_per_prompt
        if k < 2:  # every estimator's baseline is the rest of the group: with one response nothing trains
            raise ConfigError(f"rollout.samples_per_prompt={k}: the group baselines ({self.algorithm.advantage}) "
                              "need at least 2 responses per prompt")
        f = self.filter
        if f.enabled and not any(f.low <= j / k <= f.high for j in range(k + 1)):
            raise ConfigError(f"filter.low={f.low}, filter.high={f.high}: no group of {k} responses can have an "
                              "accuracy in this band, so every group would be dropped and nothing would train")
        b = self.rollout.prompts_per_step
        if b % self.prm.mini_batches:
            raise ConfigError(f"prm.mini_batches={self.prm.mini_batches}: must divide rollout.prompts_per_step={b} "
                              "(the PRM is updated on whole groups)")
        if (b * k) % self.policy.mini_batches:
            raise ConfigError(f"policy.mini_batches={self.policy.mini_batches}: must divide the {b * k} responses "
                              f"of a step (rollout.prompts_per_step x rollout.samples_per_prompt)")
        if self.model.path is not None and self.data.train is None:
            raise ConfigError(f"data.train: required with model.path={self.model.path} (the built-in arithmetic "
                              "prompts are for the built-in model); point it at your training prompts")
        if self.rollout.prompts_per_step % world_size:
            raise ConfigError(
                f"rollout.prompts_per_step={self.rollout.prompts_per_step}: must divide evenly over "
                f"{world_size} ranks"
            )


def register_schema() -> None:
    """Make the schema available to ``recipes/base.yaml`` as ``prm_rl_schema``."""
    ConfigStore.instance().store(name="prm_rl_schema", node=Config)


def to_config(cfg: DictConfig | dict[str, Any], world_size: int = 1) -> Config:
    """Validate a composed config and return it as typed objects."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: required but not set (e.g. {missing[0]}=VALUE on the command line)")
    typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    typed.check(world_size)
    return typed
