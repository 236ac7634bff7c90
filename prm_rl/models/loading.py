"""Where the starting checkpoint comes from, and how models and tokenizers are loaded from it.

``model.path: null`` selects the built-in tiny model, warm-started by SFT (cached); any other value is a
Hugging Face checkpoint directory loaded as is. Both go through the same ``from_pretrained`` calls.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from prm_rl.config import Config
from prm_rl.data import arithmetic, code_task
from prm_rl.data.prompts import TaskConfig
from prm_rl.models.tiny import TinyModelConfig
from prm_rl.models.warm_start import _spec, ensure_warm_start


def task_config(cfg: Config) -> TaskConfig:
    """The built-in task's generator config, picked by ``task.name``, with the ``task.*`` knobs that apply.

    code: ``max_factor`` bounds the slope and ``max_operand`` the intercept; the chain-length knobs
    (``min_steps``, ``max_steps``, ``max_value``) have no meaning there and keep the generator's defaults.
    """
    t = cfg.task
    if t.name == arithmetic.TASK_NAME:
        return arithmetic.ArithmeticConfig(t.min_steps, t.max_steps, t.max_operand, t.max_factor, t.max_value)
    if t.name == code_task.TASK_NAME:
        return code_task.CodeConfig(max_slope=t.max_factor, max_intercept=t.max_operand)
    raise ValueError(f"task.name={t.name!r}: no built-in task of that name")


def start_checkpoint(cfg: Config, log=print) -> str:
    """Directory of the SFT model every model of the run starts from (training the warm start if needed)."""
    if cfg.model.path is not None:
        return cfg.model.path
    spec = _spec(TinyModelConfig(**asdict(cfg.model.tiny)), task_config(cfg), asdict(cfg.warm_start),
                 heldout_seed=cfg.task.seed, heldout_size=cfg.task.eval_size)
    return str(ensure_warm_start(cfg.warm_start.cache_dir, spec, log=log))


def load_tokenizer(cfg: Config, checkpoint: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path or checkpoint)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(checkpoint: str, dtype: str, gradient_checkpointing: bool = False) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model
