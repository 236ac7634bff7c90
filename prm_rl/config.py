"""Typed schema of the training config: every option's type, default, one-line doc and rules.

Each field carries its default and, under it, its doc (CleanRL's ``Args`` style); ``prm_rl/recipes/base.yaml`` shows
the same values with the same docs as comments, and ``tests/unit/test_config.py`` fails if the two differ in
any value or word. The built-in tasks' knobs and the tiny model's shape are their own config classes, beside
the code that uses them (``ArithmeticConfig``, ``CodeConfig``, ``TinyModelConfig``). Allowed values come from
the code that implements them (registries of estimators and losses, the data formats and mappings).

Hydra merges the YAML onto these classes, so an unknown key (a typo) or a wrong type fails at composition,
and :func:`to_config` runs each section's ``check()`` and the cross-section rules of :meth:`Config.check`
before any model loads, each failing with one line that names the field and the rule.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from prm_rl.data.arithmetic import ArithmeticConfig
from prm_rl.data.code_task import CodeConfig
from prm_rl.errors import ConfigError
from prm_rl.models.tiny import TinyModelConfig
from prm_rl.rollout.vllm_engine import VllmConfig

RECIPES = Path(__file__).resolve().parent / "recipes"  # the built-in config tree (base.yaml, recipe/*.yaml), packaged

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
class LoraSection:
    """LoRA adapter on the frozen starting model (PEFT); trained roles with one share that base and the reference"""

    r: int = 0
    """adapter rank; 0 = off (the whole model is trained)"""
    alpha: float = 16.0
    """scale: the adapter adds (alpha / r) B A to each targeted weight"""
    dropout: float = 0.0
    """dropout on the adapter's input (training only)"""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """module names to adapt (PEFT's target_modules); all-linear = every linear layer but the output head"""

    def check(self, name: str) -> None:
        if self.r < 0:
            raise ConfigError(f"{name}.r={self.r}: must be >= 0 (0 = off)")
        if self.r:
            _positive(f"{name}.alpha", self.alpha)
            if not 0 <= self.dropout < 1:
                raise ConfigError(f"{name}.dropout={self.dropout}: must be in [0, 1)")
            if not self.target_modules:
                raise ConfigError(f"{name}.target_modules: empty; name the modules to adapt, or all-linear")
        # Whether the model has the target modules is checked when the adapter is built (models/lora.py).


ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


@dataclass
class ModelSection:
    """The starting checkpoint: policy, PRM and reference all start from it"""

    path: Optional[str] = None
    """Hugging Face checkpoint dir of the SFT model; null = built-in tiny model, warm-started by SFT"""
    tokenizer_path: Optional[str] = None
    """tokenizer dir if not beside the model; null = model.path (or the built-in char tokenizer)"""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """shape of the built-in model (Llama architecture, tied embeddings; models/tiny.py)"""
    dtype: str = "float32"
    """float32 | bfloat16: weights and compute of policy, PRM and reference"""
    gradient_checkpointing: bool = False
    """trade compute for activation memory in policy and PRM updates"""
    offload_reference: bool = False
    """keep the frozen reference in host memory, on the GPU only for its forwards (no effect on CPU or at ZeRO-3)"""
    attn_implementation: str = "auto"
    """auto | sdpa | eager | flash_attention_2: attention kernel; auto = flash_attention_2 where flash-attn imports on a GPU, else sdpa"""
    lora: LoraSection = field(default_factory=LoraSection)
    """the policy as a LoRA adapter (docs/algorithm.md, LoRA)"""

    def check(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        _choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        self.lora.check("model.lora")
        # What model.path and model.tokenizer_path name is checked by models.loading.check_model_source.


@dataclass
class WarmStartSection:
    """SFT of the built-in model with TRL's SFTTrainer; runs once, then cached"""

    cache_dir: str = "~/.cache/prm_rl/warm_start"
    """one folder per distinct warm-start config"""
    num_examples: int = 44800
    """distinct training demonstrations (350 x 128: each is seen once)"""
    max_steps: int = 350
    """optimiser steps (stops mid-curve at ~43% held-out: room for RL to show)"""
    batch_size: int = 128
    """demonstrations per step"""
    learning_rate: float = 0.001
    """AdamW peak learning rate (5% linear warm-up)"""
    lr_scheduler: str = "constant_with_warmup"
    """cosine | constant_with_warmup | linear"""
    seed: int = 0
    """model init and data order"""
    chain_steps: Optional[list[int]] = None
    """arithmetic only: [fewest, most] operations in the demonstrations' chains; null = task.arithmetic's"""
    shipped: bool = True
    """use the SFT model shipped with prm_rl when its config matches (the same start on every machine); false = cache_dir's, or train one"""

    def check(self) -> None:
        for name in ("num_examples", "max_steps", "batch_size", "learning_rate"):
            _positive(f"warm_start.{name}", getattr(self, name))
        _choice("warm_start.lr_scheduler", self.lr_scheduler, ("cosine", "constant_with_warmup", "linear"))
        if self.chain_steps is not None and not (len(self.chain_steps) == 2 and 1 <= self.chain_steps[0]
                                                 <= self.chain_steps[1]):
            raise ConfigError(f"warm_start.chain_steps={list(self.chain_steps)}: must be [fewest, most] with "
                              "1 <= fewest <= most")


@dataclass
class TaskSection:
    """The built-in task, used when data.train is null"""

    name: str = "arithmetic"
    """arithmetic (prm_rl/data/arithmetic.py) | code (prm_rl/data/code_task.py)"""
    # One section per built-in task: its generator's own config class (prm_rl/data/), knobs and defaults.
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """knobs of the arithmetic task (prm_rl/data/arithmetic.py: ArithmeticConfig)"""
    code: CodeConfig = field(default_factory=CodeConfig)
    """knobs of the code task (prm_rl/data/code_task.py: CodeConfig)"""
    train_size: int = 20000
    """RL prompts (disjoint from the held-out split)"""
    eval_size: int = 512
    """held-out problems for eval_accuracy_* (std. error ~2.2 points at 512)"""
    seed: int = 1234
    """held-out split seed; the RL prompt split uses seed + 1"""

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
    """Prompts from your own files (docs/datasets.md); data.train null = the built-in task"""

    train: Optional[str] = None
    """RL prompts: a .jsonl/.parquet file, a `datasets` directory (save_to_disk) or a Hub dataset id (ORG/NAME)"""
    eval: Optional[str] = None
    """held-out prompts for eval_accuracy_* (greedy); null with data.train set = no evaluation"""
    format: str = "auto"
    """auto (by extension; a directory = hf_disk; ORG/NAME that is no local path = hub) | jsonl | parquet | hf_disk | hub"""
    config: Optional[str] = None
    """Hub datasets: the dataset's config (e.g. main for openai/gsm8k); null = its default"""
    split: str = "train"
    """split to read (a Hub dataset, or a datasets directory holding a DatasetDict)"""
    eval_split: Optional[str] = None
    """split of data.eval (e.g. test, with data.eval = data.train's Hub id); null = data.split"""
    mapping: str = "prime"
    """row layout: prime (chat prompt, reward_model.ground_truth) | gsm8k | math | code | fields"""
    fields: dict[str, str] = field(default_factory=dict)
    """mapping=fields: {prompt: KEY, answer: KEY, tests: KEY, task: KEY}; a.b reaches nested keys"""
    task: Optional[str] = None
    """verifier task for every row (e.g. math); null = from the mapping / the row"""
    instruction: str = ""
    """appended to every prompt, e.g. ' Put the final answer in \\boxed{}.' (single quotes keep the backslash)"""
    chat_template: bool = True
    """wrap each prompt in the tokenizer's chat template when the tokenizer has one"""
    max_prompt_tokens: int = 512
    """longer prompts are dropped (and counted in the log), never truncated"""
    max_rows: Optional[int] = None
    """read at most this many rows of each file (null = all)"""

    def check(self) -> None:
        from prm_rl.data.files import FORMATS, is_hub_id
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
            if value is not None and not os.path.exists(os.path.expanduser(value)) and not is_hub_id(value):
                raise ConfigError(f"data.{name}={value}: no such file or directory (nor a Hub dataset id, ORG/NAME)")


@dataclass
class VerifierSection:
    """Outcome verifiers (docs/verifiers.md); a sample's `task` picks one"""

    num_workers: int = 2
    """verifier worker processes (math and code run there; arithmetic in-process)"""
    timeout_s: float = 10.0
    """per-sample time limit; a timeout or an exception scores 0 and is counted"""
    tasks: dict[str, Any] = field(default_factory=dict)
    """task name -> options, e.g. {code: {memory_mb: 512}, mytask: {_target_: pkg.mod.fn}}"""

    def check(self) -> None:
        _positive("verifier.num_workers", self.num_workers)
        _positive("verifier.timeout_s", self.timeout_s)


@dataclass
class BranchSection:
    """Rollouts that branch (prm_rl/rollout/branch.py): a prompt's K responses grow from M roots forked mid-way"""

    roots: int = 0
    """M: root samples per prompt; 0 = no branching (K independent samples)"""
    points: int = 1
    """forks per root, at its highest-entropy positions (rollout.branch.by)"""
    ways: int = 2
    """responses through each fork: the root and ways - 1 new continuations (K = roots x (1 + points x (ways - 1)))"""
    at: str = "step"
    """step: fork where a new step starts (after a reward.step_delimiter) | token: at any token"""
    by: str = "entropy"
    """which of those positions: entropy (the highest-entropy ones, TreeRL) | uniform (drawn at random, a control)"""

    def check(self, k: int) -> None:
        from prm_rl.rollout.branch import FORK_PRIORITIES, FORK_RULES, leaves_per_root

        _choice("rollout.branch.at", self.at, FORK_RULES)
        _choice("rollout.branch.by", self.by, FORK_PRIORITIES)
        _non_negative("rollout.branch.roots", self.roots)
        _positive("rollout.branch.points", self.points)
        if self.ways < 2:
            raise ConfigError(f"rollout.branch.ways={self.ways}: must be >= 2 (the root and a new continuation)")
        if self.roots and self.roots * leaves_per_root(self.points, self.ways) != k:
            raise ConfigError(f"rollout.branch: roots x (1 + points x (ways - 1)) = {self.roots} x (1 + {self.points} "
                              f"x {self.ways - 1}) must equal rollout.samples_per_prompt={k}")


@dataclass
class RolloutSection:
    """Sampling from the policy"""

    prompts_per_step: int = 32
    """B: prompts sampled per step (over all ranks; must divide by the rank count)"""
    samples_per_prompt: int = 8
    """K: responses per prompt (the RLOO group)"""
    temperature: float = 1.0
    """sampling temperature (log-probs are computed at the same temperature)"""
    top_p: float = 1.0
    """nucleus sampling; 1.0 = sample from the full distribution"""
    max_new_tokens: int = 64
    """response length cap; a response without EOS by then counts as truncated"""
    eval_batch_size: int = 256
    """prompts per batch in greedy held-out evaluation"""
    release_cache: bool = False
    """hand the GPU memory cached by generation (KV cache blocks) back before the updates; no effect on CPU"""
    engine: str = "hf"
    """hf (the trainer's own decode loop) | vllm (a vLLM engine per rank, synced after every update; README)"""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """the vLLM engine's settings (prm_rl/rollout/vllm_engine.py: VllmConfig)"""
    is_correction: str = "none"
    """none | tis | mask: weight the policy loss for the sampler/trainer log-prob mismatch (docs/algorithm.md)"""
    is_cap: float = 2.0
    """tis: cap on the importance weight; mask: tokens with a weight outside [1/cap, cap] leave the loss"""
    branch: BranchSection = field(default_factory=BranchSection)
    """rollouts that branch mid-response (off by default: roots=0)"""

    def check(self) -> None:
        from prm_rl.core import IS_CORRECTIONS

        _choice("rollout.engine", self.engine, ("hf", "vllm"))
        _choice("rollout.is_correction", self.is_correction, IS_CORRECTIONS)
        if not self.is_cap > 1:
            raise ConfigError(f"rollout.is_cap={self.is_cap}: must be > 1")
        if self.is_correction != "none" and self.engine == "hf":
            raise ConfigError(f"rollout.is_correction={self.is_correction}: needs rollout.engine=vllm (the hf "
                              "engine samples with the trainer's own log-probs: there is nothing to correct)")
        if not 0 < self.vllm.gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.vllm.gpu_memory_utilization={self.vllm.gpu_memory_utilization}: "
                              "must be in (0, 1]")
        if self.vllm.kv_cache_gib is not None:
            _positive("rollout.vllm.kv_cache_gib", self.vllm.kv_cache_gib)
        if self.vllm.sleep_level not in (None, 0, 1, 2):
            raise ConfigError(f"rollout.vllm.sleep_level={self.vllm.sleep_level}: must be 0, 1, 2 or null")
        _positive("rollout.prompts_per_step", self.prompts_per_step)
        _positive("rollout.samples_per_prompt", self.samples_per_prompt)
        _positive("rollout.eval_batch_size", self.eval_batch_size)
        _positive("rollout.temperature", self.temperature)
        _positive("rollout.max_new_tokens", self.max_new_tokens)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p={self.top_p}: must be in (0, 1]")
        self.branch.check(self.samples_per_prompt)


@dataclass
class FilterSection:
    """Online prompt filter (PRIME section 3.3)"""

    enabled: bool = True
    """false: every group is kept"""
    low: float = 0.2
    """keep a prompt if low <= mean score of its K responses <= high (inclusive)"""
    high: float = 0.8
    """upper end of that band"""
    drop_truncated: bool = False
    """also drop a group if any of its responses hit max_new_tokens"""
    fill_rounds: int = 1
    """rounds of prompts_per_step prompts sampled until that many groups pass; extras carry over (authors' code); 1 =
    the batch shrinks to what passes (veRL port)"""

    def check(self) -> None:
        if not 0 <= self.low <= self.high <= 1:
            raise ConfigError(f"filter.low={self.low}, filter.high={self.high}: need 0 <= low <= high <= 1")
        _positive("filter.fill_rounds", self.fill_rounds)


@dataclass
class LrScheduleSection:
    """learning rate by trainer step: linear warm-up from 0, then decay (prm_rl/core/schedule.py)"""

    decay: str = "constant"
    """constant | linear | cosine, from learning_rate after the warm-up to min_lr_ratio x it at the last step"""
    warmup_steps: float = 0.0
    """steps of linear warm-up from 0; below 1, that share of trainer.max_steps (as transformers reads it)"""
    min_lr_ratio: float = 0.0
    """linear | cosine: the floor the decay ends at, as a share of learning_rate"""

    def check(self, where: str) -> None:
        from prm_rl.core import LR_DECAYS

        _choice(f"{where}.decay", self.decay, LR_DECAYS)
        _non_negative(f"{where}.warmup_steps", self.warmup_steps)
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise ConfigError(f"{where}.warmup_steps={self.warmup_steps}: a number of steps (an integer), or a share "
                              "of trainer.max_steps below 1")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio={self.min_lr_ratio}: must be in [0, 1]")


@dataclass
class PrmSection:
    """The implicit PRM: pi_phi, trained online on outcome labels"""

    update: str = "after"
    """none (frozen) | after (rewards from the update's own forward) | before (update, then re-score)"""
    loss: str = "ce"
    """ce: BCE(sigmoid(beta * sum_t log-ratio), outcome) | dpo: pairwise within a group | prefix: BCE at every step end"""
    targets: str = "outcome"
    """loss=prefix: what each prefix learns: outcome (the response's, IPVRM) | tree (the group's prefix-tree value)"""
    margin: float = 0.0
    """loss=prefix: symmetric margin m of BCE(sigmoid(v - m), y) and BCE(sigmoid(-(v + m)), 1 - y) (IPVRM)"""
    reference: str = "sft"
    """sft: frozen copy of the starting model | policy: the rollout policy's old log-probs"""
    init_path: Optional[str] = None
    """checkpoint dir the PRM starts from (e.g. an offline-trained PRM, same tokenizer); null = the starting model"""
    beta: float = 0.05
    """log-ratio scale in the PRM loss (loss=prefix: of the prefix's mean log-ratio, so set it far higher, ~1-10)"""
    learning_rate: float = 1e-06
    """AdamW peak learning rate"""
    lr_schedule: LrScheduleSection = field(default_factory=LrScheduleSection)
    """learning rate by trainer step: linear warm-up from 0, then decay (prm_rl/core/schedule.py)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 10.0
    """clip the global gradient norm of each PRM optimiser step to this"""
    mini_batches: int = 4
    """PRM optimiser steps per pass (the kept batch, by group, in this many parts)"""
    micro_batch_size: int = 64
    """sequences per PRM forward/backward on one rank (whole groups; gradient accumulation)"""
    micro_batch_tokens: int = 0
    """also cap each PRM forward/backward at this many padded tokens (rows x longest row); 0 = no cap"""
    epochs: int = 1
    """passes over the kept batch per training step (loss and rewards from the first)"""
    lora: LoraSection = field(default_factory=LoraSection)
    """the PRM as a LoRA adapter: log-ratio against the same base with no adapter (docs/algorithm.md, LoRA)"""

    def check(self) -> None:
        self.lora.check("prm.lora")
        from prm_rl.core import PRM_LOSSES  # torch: imported only when a config is validated

        _choice("prm.update", self.update, ("none", "after", "before"))
        _positive("prm.epochs", self.epochs)
        _choice("prm.loss", self.loss, tuple(PRM_LOSSES))
        _choice("prm.targets", self.targets, ("outcome", "tree"))
        _non_negative("prm.margin", self.margin)
        if self.loss != "prefix" and (self.targets != "outcome" or self.margin):
            raise ConfigError(f"prm.targets={self.targets}, prm.margin={self.margin}: only prm.loss=prefix reads them "
                              f"(prm.loss={self.loss})")
        _choice("prm.reference", self.reference, ("sft", "policy"))
        _positive("prm.beta", self.beta)
        _positive("prm.learning_rate", self.learning_rate)
        self.lr_schedule.check("prm.lr_schedule")
        _non_negative("prm.weight_decay", self.weight_decay)
        _positive("prm.grad_clip", self.grad_clip)
        _positive("prm.mini_batches", self.mini_batches)
        _positive("prm.micro_batch_size", self.micro_batch_size)
        _non_negative("prm.micro_batch_tokens", self.micro_batch_tokens)


@dataclass
class PrmEvalSection:
    """Held-out evaluation of the PRM (docs/prm_eval.md), whenever held-out accuracy is measured"""

    num_prompts: int = 128
    """held-out prompts (the first N of the held-out split); 0 = no PRM evaluation"""
    samples_per_prompt: int = 8
    """responses sampled per prompt from the current policy (the within-group ranking)"""
    temperature: float = 1.0
    """sampling temperature of those responses"""
    seed: int = 0
    """sampling seed: each evaluation of one policy sees the same responses"""
    table_rows: int = 6
    """held-out responses drawn as token heatmaps per evaluation (W&B table, prm_eval/ dir)"""

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
class PrmTrainSection:
    """Offline implicit PRM training (launch/train_prm.py; docs/prm_training.md); launch/train.py ignores it"""

    data: Optional[str] = None
    """labelled rows (.jsonl/.parquet/datasets dir) of prompt, response, label; null = sample and label them"""
    fields: dict[str, str] = field(default_factory=dict)
    """row keys, e.g. {prompt: question, response: output, label: correct}; unset keys = prompt, response, label"""
    num_prompts: int = 512
    """data null: training prompts to sample for (the first N of the built-in task's or data.train's)"""
    samples_per_prompt: int = 8
    """data null: responses sampled from the starting model per prompt and labelled by the verifier"""
    epochs: int = 2
    """passes over the labelled rows (the run's length)"""
    prompts_per_update: int = 32
    """prompts (each with all its responses) per optimiser step"""

    def check(self) -> None:
        unknown = set(self.fields) - {"prompt", "response", "label"}
        if unknown:
            raise ConfigError(f"prm_train.fields: unknown key {sorted(unknown)[0]!r}: the keys are prompt, "
                              "response, label")
        _positive("prm_train.num_prompts", self.num_prompts)
        if self.samples_per_prompt < 2:
            raise ConfigError(f"prm_train.samples_per_prompt={self.samples_per_prompt}: the dpo loss and the "
                              "within-prompt metrics need at least 2")
        _positive("prm_train.epochs", self.epochs)
        _positive("prm_train.prompts_per_update", self.prompts_per_update)


@dataclass
class RewardSection:
    """The outcome score's shaping and [0, 1] labels, and how PRM log-ratios become dense process rewards"""

    granularity: str = "token"
    """token | step (sum over spans ending in step_delimiter) | whole (sum on the last token)"""
    step_delimiter: str = "\n"
    """closes a step when granularity=step"""
    scale_by_beta: bool = False
    """true: reward = beta * log-ratio (veRL port); false: log-ratio (authors' code)"""
    normalize: str = "batch_max_return"
    """batch_max_return: divide by the largest |reverse cumulative sum| in the batch | none"""
    reward_eos: bool = True
    """true: the last (EOS) token gets its process reward (authors' code); false: none (veRL port)"""
    process_coef: float = 1.0
    """weight of the process-reward advantage"""
    outcome_coef: float = 1.0
    """weight of the outcome-reward advantage"""
    credit: str = "sum"
    """sum (PRIME: a token's return adds every reward ahead) | min | softmin (PURE: the worst reward ahead)"""
    softmin_temperature: float = 0.1
    """T of credit=softmin: each reward weighted by softmax(-r/T) over its response's rewards (PURE's 0.1)"""
    outcome_labels: str = "score"
    """[0, 1] labels the PRM learns and the filter averages: score (scores must lie in [0, 1]) | threshold (1 if score > label_threshold, else 0) | sigmoid (sigmoid(score - label_threshold))"""
    label_threshold: float = 0.0
    """outcome_labels=threshold | sigmoid: the score that separates right from wrong (e.g. a reward model's logit 0)"""
    overlong_buffer: int = 0
    """DAPO's soft overlong penalty: a response longer than rollout.max_new_tokens minus this many tokens loses up to overlong_penalty, linearly; 0 = off"""
    overlong_penalty: float = 1.0
    """the penalty at rollout.max_new_tokens, added to the outcome score the estimator reads (DAPO: 1)"""
    kl_coef: float = 0.0
    """weight of a per-token -KL(pi_old || pi_ref) reward added before the advantages (veRL's use_kl_in_reward); 0 = off"""
    kl_estimator: str = "k1"
    """k1 | k3: the KL estimator of that reward"""

    def check(self) -> None:
        from prm_rl.core import CREDITS, GRANULARITIES, KL_ESTIMATORS, OUTCOME_LABELS

        _choice("reward.granularity", self.granularity, GRANULARITIES)
        _choice("reward.normalize", self.normalize, ("batch_max_return", "none"))
        _choice("reward.credit", self.credit, CREDITS)
        _positive("reward.softmin_temperature", self.softmin_temperature)
        _choice("reward.outcome_labels", self.outcome_labels, OUTCOME_LABELS)
        if self.outcome_labels == "score" and self.label_threshold:
            raise ConfigError(f"reward.label_threshold={self.label_threshold}: only reward.outcome_labels=threshold "
                              "or sigmoid reads it (reward.outcome_labels=score)")
        _non_negative("reward.overlong_buffer", self.overlong_buffer)
        _positive("reward.overlong_penalty", self.overlong_penalty)
        _non_negative("reward.kl_coef", self.kl_coef)
        _choice("reward.kl_estimator", self.kl_estimator, KL_ESTIMATORS)


@dataclass
class AlgorithmSection:
    """The advantage estimator (registered by name in prm_rl/core/advantages.py)"""

    advantage: str = "prime"
    """prime (RLOO process + RLOO outcome) | rloo (outcome only; no PRM loaded) | grpo | dr-grpo (GRPO without std
    scaling) | spro (policy as its own PRM) |
    tree (RLOO outcome + prefix-tree credit; no PRM) | prime-tree (prime + prefix-tree credit) | oracle-steps,
    oracle-from-error, oracle-error-step (the task's step checker as credit: controls, built-in arithmetic only) |
    reinforce++ (token returns of the outcome and reward.kl_coef's KL reward, batch-whitened, no baseline) |
    reinforce++-baseline (the same, the group's mean outcome subtracted first)"""
    process_gamma: float = 1.0
    """discount of the process-reward returns (the authors' reward_model_gamma)"""
    outcome_gamma: float = 1.0
    """discount of the outcome reward back from the last token (the authors' verifier_gamma)"""
    whiten: bool = True
    """whiten advantages over all valid tokens of the batch (global statistics)"""
    tree_coef: float = 1.0
    """tree | prime-tree: weight of the group's prefix-tree credit V(node) - V(parent) on each segment's tokens"""
    tree_split: str = "step"
    """tree | prime-tree: where the tree branches: step (at reward.step_delimiter) | token (at every token)"""

    def check(self) -> None:
        from prm_rl.core import ADVANTAGE_ESTIMATORS, TREE_SPLITS

        _choice("algorithm.advantage", self.advantage, tuple(ADVANTAGE_ESTIMATORS))
        _choice("algorithm.tree_split", self.tree_split, TREE_SPLITS)
        _non_negative("algorithm.tree_coef", self.tree_coef)
        for name in ("process_gamma", "outcome_gamma"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"algorithm.{name}={getattr(self, name)}: must be in (0, 1]")

    @property
    def uses_prm(self) -> bool:
        """The estimator takes the PRM's dense rewards: the run builds and trains a PRM."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].uses_prm

    @property
    def self_guided(self) -> bool:
        """The estimator reads the policy's own implicit rewards against the reference (SPRO): no PRM."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].self_guided

    @property
    def checked_steps(self) -> bool:
        """The estimator reads the task's own step checker (an oracle control): no PRM."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].checked_steps

    @property
    def token_kl(self) -> bool:
        """The estimator takes reward.kl_coef's KL reward per token (REINFORCE++), not summed into the score."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].token_kl

    @property
    def uses_tree(self) -> bool:
        """The estimator adds the group's prefix-tree credit (algorithm.tree_coef, tree_split)."""
        from prm_rl.core import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS[self.advantage].uses_tree


@dataclass
class PolicySection:
    """PPO-clip update of pi_theta, no critic"""

    learning_rate: float = 5e-07
    """AdamW peak learning rate"""
    lr_schedule: LrScheduleSection = field(default_factory=LrScheduleSection)
    """learning rate by trainer step: linear warm-up from 0, then decay (prm_rl/core/schedule.py)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """clip the global gradient norm of each policy optimiser step to this"""
    clip_eps: float = 0.2
    """ratio clipped to [1 - clip_eps, 1 + clip_eps_high]"""
    clip_eps_high: Optional[float] = None
    """upper clip bound (DAPO's clip-higher, e.g. 0.28); null = clip_eps"""
    ratio_level: str = "token"
    """token (PPO) | sequence (GSPO: each token takes its response's length-normalised ratio; use clip_eps ~4e-4)"""
    dual_clip: Optional[float] = None
    """dual-clip constant c > 1 for negative advantages; null = off"""
    kl_coef: float = 0.0
    """weight of a KL(pi_theta || pi_ref) loss term; 0 = no reference model needed for it"""
    kl_estimator: str = "k3"
    """k1 | k3"""
    entropy_coef: float = 0.0
    """entropy bonus weight"""
    loss_agg: str = "seq-mean-token-mean"
    """seq-mean-token-mean | token-mean | seq-mean-token-sum-norm (Dr. GRPO: token sums / rollout.max_new_tokens)"""
    ppo_epochs: int = 1
    """passes over the kept batch per step"""
    mini_batches: int = 4
    """optimiser steps per epoch (the kept batch, shuffled, in this many parts)"""
    micro_batch_size: int = 64
    """sequences per forward/backward on one rank (gradient accumulation within a mini-batch)"""
    micro_batch_tokens: int = 0
    """also cap each policy and reference forward/backward at this many padded tokens (rows x longest row); 0: none"""
    skip_zero_advantage: bool = True
    """skip forward/backward of rows with advantage 0 at every token (zero gradient); off with entropy or KL terms"""

    def check(self) -> None:
        _positive("policy.learning_rate", self.learning_rate)
        self.lr_schedule.check("policy.lr_schedule")
        _non_negative("policy.weight_decay", self.weight_decay)
        _positive("policy.grad_clip", self.grad_clip)
        _positive("policy.clip_eps", self.clip_eps)
        if self.clip_eps_high is not None:
            _positive("policy.clip_eps_high", self.clip_eps_high)
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ConfigError(f"policy.dual_clip={self.dual_clip}: must be > 1 (or null to disable)")
        from prm_rl.core import KL_ESTIMATORS, LOSS_AGGREGATIONS, RATIO_LEVELS

        _choice("policy.ratio_level", self.ratio_level, RATIO_LEVELS)
        _choice("policy.kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        _choice("policy.loss_agg", self.loss_agg, LOSS_AGGREGATIONS)
        _positive("policy.ppo_epochs", self.ppo_epochs)
        _positive("policy.mini_batches", self.mini_batches)
        _positive("policy.micro_batch_size", self.micro_batch_size)
        _non_negative("policy.micro_batch_tokens", self.micro_batch_tokens)


@dataclass
class DeepSpeedSection:
    """The DeepSpeed JSON is derived from these and the sections above"""

    zero_stage: int = 2
    """0 | 1 | 2 | 3"""
    offload: bool = False
    """ZeRO-Offload of optimiser states (and parameters at stage 3) to CPU memory"""

    def check(self) -> None:
        _choice("deepspeed.zero_stage", str(self.zero_stage), ("0", "1", "2", "3"))


@dataclass
class TrainerSection:
    """Run length, evaluation, checkpoints"""

    max_steps: int = 100
    """PRIME steps (launch/train_prm.py: its steps are PRM updates, their number set by prm_train.epochs)"""
    seed: int = 0
    """sampling, shuffling and prompt order"""
    output_dir: Optional[str] = None
    """run directory; null = runs/<recipe> (so re-running a command resumes it)"""
    eval_every: int = 0
    """held-out eval every N steps (0 = only at start and end)"""
    progress_bar: bool = True
    """console progress bar on rank 0"""
    resume: str = "auto"
    """auto: continue from the latest complete checkpoint in output_dir | never | PATH of one"""
    checkpoint_every: int = 20
    """save a checkpoint every N steps (0 = only at the end); one is always saved at the end"""
    keep_checkpoints: int = 2
    """newest checkpoints kept; older ones are deleted once a newer one is complete"""
    checkpoint_hf: bool = True
    """also write each trained model's Hugging Face export into every checkpoint (policy/hf, prm/hf); false: only RUN/policy, RUN/prm at the end"""
    max_bad_steps: int = 3
    """stop after this many steps in a row whose updates were skipped for NaN/inf"""
    cpu_ranks: int = 0
    """no GPU and one process launched: start this many ranks of one thread; 0 = one per core (at most 8)"""

    def check(self) -> None:
        _positive("trainer.max_steps", self.max_steps)
        if self.cpu_ranks < 0:
            raise ConfigError(f"trainer.cpu_ranks={self.cpu_ranks}: must be >= 0 (0 = one rank per core)")
        if self.checkpoint_every < 0:
            raise ConfigError(f"trainer.checkpoint_every={self.checkpoint_every}: must be >= 0 (0 = only at the end)")
        _positive("trainer.keep_checkpoints", self.keep_checkpoints)
        _positive("trainer.max_bad_steps", self.max_bad_steps)
        if self.resume not in ("auto", "never") and not os.path.isdir(os.path.expanduser(self.resume)):
            raise ConfigError(f"trainer.resume={self.resume}: must be auto, never, or an existing checkpoint directory")


@dataclass
class WandbSection:
    """Experiment tracking (metrics.jsonl is written either way)"""

    mode: str = "auto"
    """auto (online if WANDB_API_KEY is set, else offline) | online | offline | disabled"""
    project: str = "prm_rl"
    """W&B project"""
    entity: Optional[str] = None
    """W&B team or user; null = your default entity"""
    name: Optional[str] = None
    """run name; null = the run directory's name"""

    def check(self) -> None:
        _choice("wandb.mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class TrackingSection:
    """Training rollouts for reading (docs/recipes.md, "Training rollouts")"""

    rollout_table_every: int = 0
    """W&B table of the step's rollouts (responses coloured by process reward) every N steps; 0 = off"""
    rollout_table_groups: int = 4
    """groups in that table, each with all its responses: half trained, half filtered out where the step has both"""
    rollouts_jsonl_mb: float = 0.0
    """write every rollout to RUN/rollouts.jsonl until it would pass this many MB (10^6 bytes); 0 = off"""

    def check(self) -> None:
        if self.rollout_table_every < 0:
            raise ConfigError(f"tracking.rollout_table_every={self.rollout_table_every}: must be >= 0 (0 = off)")
        _positive("tracking.rollout_table_groups", self.rollout_table_groups)
        if self.rollouts_jsonl_mb < 0:
            raise ConfigError(f"tracking.rollouts_jsonl_mb={self.rollouts_jsonl_mb}: must be >= 0 (0 = off)")


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
    prm_train: PrmTrainSection = field(default_factory=PrmTrainSection)
    reward: RewardSection = field(default_factory=RewardSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    policy: PolicySection = field(default_factory=PolicySection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)

    @property
    def needs_reference(self) -> bool:
        """A frozen copy of the starting model is loaded: the PRM reads it (``prm.reference=sft``), or the KL
        term, or SPRO's self-guided reward does. The trainer and the memory estimator both ask this."""
        a = self.algorithm
        return bool((a.uses_prm and self.prm.reference == "sft") or self.policy.kl_coef or self.reward.kl_coef
                    or a.self_guided)

    def check(self, world_size: int = 1, offline_prm: bool = False) -> None:
        """Run every section's rules, then the rules that span sections (``offline_prm``: for
        launch/train_prm.py, which reads prompts only to sample responses and to evaluate)."""
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
        if self.algorithm.checked_steps and (self.data.train is not None or self.task.name != "arithmetic"):
            raise ConfigError(f"algorithm.advantage={self.algorithm.advantage}: credits steps by the task's own step "
                              "checker, which only the built-in arithmetic task has (data.train null, "
                              "task.name=arithmetic)")
        self._check_outcome_shaping(offline_prm)
        if self.warm_start.chain_steps is not None and (self.model.path is not None or self.task.name != "arithmetic"):
            raise ConfigError("warm_start.chain_steps: sets the chains of the built-in model's SFT on the arithmetic "
                              "task (model.path null, task.name=arithmetic)")
        if self.model.path is not None and self.data.train is None and not (offline_prm and self.prm_train.data):
            raise ConfigError(f"data.train: required with model.path={self.model.path} (the built-in arithmetic "
                              "prompts are for the built-in model); point it at your training prompts")
        lora = [name for name, r in (("model.lora", self.model.lora.r), ("prm.lora", self.prm.lora.r)) if r]
        if self.prm.lora.r and self.prm.init_path is not None:
            raise ConfigError(f"prm.lora.r={self.prm.lora.r}: a LoRA PRM is an adapter on the starting model (its "
                              f"reference), so it cannot start from prm.init_path={self.prm.init_path}; drop one")
        if len(lora) == 2 and self.deepspeed.zero_stage == 3:
            raise ConfigError("deepspeed.zero_stage=3 with model.lora.r and prm.lora.r both > 0: two ZeRO-3 engines "
                              "cannot partition one shared base; use zero_stage 2 (the frozen base is replicated, "
                              "the adapters' gradients and optimiser states are partitioned) or one adapter")
        if lora and self.model.offload_reference:
            raise ConfigError(f"model.offload_reference=true: with {lora[0]}.r > 0 the reference is the base the "
                              "adapters train on, which stays on the device; drop the override")
        if offline_prm and self.rollout.engine != "hf":
            raise ConfigError(f"rollout.engine={self.rollout.engine}: launch/train_prm.py samples its training set "
                              "once, with the hf engine; drop the override")
        if self.tracking.rollout_table_every and self.wandb.mode == "disabled":
            raise ConfigError(f"tracking.rollout_table_every={self.tracking.rollout_table_every}: the table goes to "
                              "W&B, which wandb.mode=disabled turns off; set it to 0 or turn W&B on")
        if self.rollout.prompts_per_step % world_size:
            raise ConfigError(
                f"rollout.prompts_per_step={self.rollout.prompts_per_step}: must divide evenly over "
                f"{world_size} ranks"
            )

    def _check_outcome_shaping(self, offline_prm: bool) -> None:
        """The rules of ``reward.overlong_*``, ``reward.kl_coef`` and ``reward.outcome_labels`` that span sections
        (``offline_prm``: the offline PRM trainer, whose PRM learns the labels whatever the estimator)."""
        r, a = self.reward, self.algorithm
        if r.overlong_buffer >= self.rollout.max_new_tokens:
            raise ConfigError(f"reward.overlong_buffer={r.overlong_buffer}: must be below rollout.max_new_tokens="
                              f"{self.rollout.max_new_tokens} (the penalty starts that many tokens before the cap)")
        if a.checked_steps and (r.overlong_buffer or r.kl_coef):
            raise ConfigError(f"reward.overlong_buffer={r.overlong_buffer}, reward.kl_coef={r.kl_coef}: the oracle "
                              f"control {a.advantage} reads the verifier's score (below 1 = wrong) unshaped; "
                              "set both 0")
        from prm_rl.rewards.scorer import real_valued_tasks

        real = real_valued_tasks(self.verifier.tasks)
        if real and r.outcome_labels == "score" and (a.uses_prm or offline_prm or self.filter.enabled):
            reader = "the PRM's labels" if a.uses_prm or offline_prm else "the accuracy-band filter"
            raise ConfigError(f"reward.outcome_labels=score: verifier.tasks.{real[0]} scores outside [0, 1] and "
                              f"{reader} need [0, 1]; set reward.outcome_labels=threshold or sigmoid")


def register_schema() -> None:
    """Make the schema available to ``prm_rl/recipes/base.yaml`` as ``prm_rl_schema``."""
    ConfigStore.instance().store(name="prm_rl_schema", node=Config)


def to_config(cfg: DictConfig | dict[str, Any], world_size: int = 1, offline_prm: bool = False) -> Config:
    """Validate a composed config and return it as typed objects (``offline_prm``: see :meth:`Config.check`)."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]}: required but not set (e.g. {missing[0]}=VALUE on the command line)")
    typed: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    typed.check(world_size, offline_prm)
    return typed
