"""Where the starting checkpoint comes from, and how models and tokenizers are loaded from it.

``model.path: null`` selects the built-in tiny model, warm-started by SFT (cached); any other value is a
Hugging Face checkpoint directory loaded as is. Both go through the same ``from_pretrained`` calls.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from dataclasses import asdict, replace

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from prm_rl.config import Config, ModelSection
from prm_rl.data.prompts import BUILTIN_TASKS
from prm_rl.engine import dist
from prm_rl.errors import UsageError
from prm_rl.models.lora import check_targets_of, lora_adapters
from prm_rl.models.tiny import build_char_tokenizer, tiny_config
from prm_rl.models.warm_start import _spec, ensure_warm_start


class ModelSourceError(UsageError):
    """``model.path`` or ``model.tokenizer_path`` names nothing loadable."""

    label = "model error"


_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_source(model: ModelSection) -> None:
    """Fail in seconds, naming the field, when ``model.path``/``model.tokenizer_path`` cannot be loaded.

    A directory must hold a config, weights and (unless ``tokenizer_path`` is set) tokenizer files. Anything
    that is not a directory here is taken for a Hub model id only if it could be one (``name`` or
    ``org/name``, not starting with ``/ . ~``): it must be in the local Hub cache or on a reachable Hub,
    asked once (``from_pretrained`` would retry for a minute and then print a traceback).
    """
    if model.path is not None:
        check_checkpoint("model.path", model.path, tokenizer=model.tokenizer_path is None)
    if model.tokenizer_path is not None:
        check_checkpoint("model.tokenizer_path", model.tokenizer_path, "tokenizer_config.json", tokenizer=True)


def check_checkpoint(field: str, value: str, key_file: str = "config.json", *, tokenizer: bool) -> None:
    """What :func:`check_model_source` checks for one option: ``field=value`` names a loadable directory or Hub id."""
    local = os.path.expanduser(value)
    if os.path.isdir(local):
        def has(*patterns: str) -> bool:
            return any(glob.glob(os.path.join(glob.escape(local), p)) for p in patterns)

        if key_file == "config.json" and not has("config.json"):
            raise ModelSourceError(f"{field}={value}: not a Hugging Face checkpoint (no config.json)")
        if key_file == "config.json" and not has(*_WEIGHTS):
            raise ModelSourceError(f"{field}={value}: no weights ({' or '.join(_WEIGHTS)})")
        if tokenizer and not has(*_TOKENIZER_FILES):
            hint = "" if field == "model.tokenizer_path" else "; set model.tokenizer_path if it is elsewhere"
            raise ModelSourceError(f"{field}={value}: no tokenizer ({', '.join(_TOKENIZER_FILES)}){hint}")
        return
    missing = f"{field}={value}: no such directory"
    if os.path.exists(local):
        raise ModelSourceError(f"{field}={value}: a file; expected a checkpoint directory or a Hub model id")
    if value.startswith(("/", ".", "~")) or value.count("/") > 1:
        raise ModelSourceError(missing)
    _check_hub_id(field, value, key_file, f"{missing} (relative to {os.getcwd()})")


def _check_hub_id(field: str, value: str, key_file: str, missing: str) -> None:
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(value, key_file), str):
            return  # downloaded before: loads offline too
    except HFValidationError:
        raise ModelSourceError(f"{missing}, nor a valid Hub model id") from None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ModelSourceError(f"{missing}, nor a Hub model in the local cache (offline mode is on)")
    try:
        huggingface_hub.HfApi().model_info(value, timeout=10)
    except GatedRepoError:
        return  # it exists; from_pretrained explains how to get access
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{missing}, nor a model id on the Hugging Face Hub") from None
    except Exception as e:  # noqa: BLE001 - any network failure means the same to the user
        raise ModelSourceError(f"{missing}, and the Hugging Face Hub cannot be reached to look it up as a "
                               f"model id ({type(e).__name__}: {' '.join(str(e).split())})") from None


def check_model_sources(cfg: Config) -> None:
    """``model.path``/``tokenizer_path``, ``prm.init_path`` and the LoRA targets: one line each, in seconds."""
    check_model_source(cfg.model)
    if cfg.prm.init_path is not None:
        check_checkpoint("prm.init_path", cfg.prm.init_path, tokenizer=False)
    check_lora_targets(cfg)


def run_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The run's tokenizer, known before any model loads or the warm start trains (so that the data can be
    checked first): ``model.tokenizer_path``, else ``model.path``'s, else the built-in task's character tokenizer,
    the one the warm start saves beside its model."""
    path = cfg.model.tokenizer_path or cfg.model.path
    if path is not None:
        return load_tokenizer(path)
    return build_char_tokenizer(BUILTIN_TASKS[cfg.task.name][1].CHARACTERS)


def start_checkpoint(cfg: Config, log=print) -> str:
    """Directory of the SFT model every model of the run starts from (training the warm start if needed)."""
    check_model_sources(cfg)
    if cfg.model.path is not None:
        return cfg.model.path
    return str(ensure_warm_start(cfg.warm_start.cache_dir, warm_start_spec(cfg), log=log,
                                 shipped=cfg.warm_start.shipped))


def warm_start_spec(cfg: Config) -> dict:
    """What the built-in model's SFT depends on (its hash names the cache folder)."""
    task = cfg.task.selected
    if cfg.warm_start.chain_steps is not None:  # SFT on other chains than RL's (shorter: the policy starts weak)
        task = replace(task, min_steps=cfg.warm_start.chain_steps[0], max_steps=cfg.warm_start.chain_steps[1])
    return _spec(cfg.model.tiny, task, asdict(cfg.warm_start), heldout_seed=cfg.task.seed,
                 heldout_size=cfg.task.eval_size)


def check_every_rank_sees(start: str) -> None:
    """Every rank loads the starting checkpoint that rank 0 found or trained (once per run): on several nodes it
    must sit on storage they all share, as the warm start's cache does only where ``warm_start.cache_dir`` is.
    Collective; raises on every rank alike. A Hub model id (no directory on rank 0) is each rank's download."""
    def here() -> bool:
        return os.path.isdir(os.path.expanduser(start))

    if not dist.broadcast_object(here()):
        return
    blind = dist.ranks_failing(here())
    if blind:
        raise ModelSourceError(f"{start}: rank(s) {', '.join(map(str, blind))} do not see the starting checkpoint "
                               "rank 0 found or trained (a disk of their own node?); put it, or warm_start.cache_dir, "
                               "on storage every node mounts at the same path")


def check_lora_targets(cfg: Config) -> None:
    """Fail in seconds, before the warm start, when ``model.lora``/``prm.lora`` targets a module the model lacks."""
    adapters = lora_adapters(cfg.model, cfg.prm)
    if adapters:
        config = tiny_config(cfg.model.tiny) if cfg.model.path is None else AutoConfig.from_pretrained(cfg.model.path)
        check_targets_of(config, adapters)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path`` (``model.tokenizer_path``, else the checkpoint's); EOS pads if it has no pad."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(checkpoint: str, dtype: str, gradient_checkpointing: bool = False, *,
                   attn_implementation: str = "auto", device: str | torch.device | None = None) -> torch.nn.Module:
    """The causal LM at ``checkpoint`` in ``dtype`` (``model.dtype``) with the attention kernel
    ``attn_implementation`` (``model.attn_implementation``), on ``device`` when given (else host memory)."""
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.bfloat16 if dtype == "bfloat16" else torch.float32,
        attn_implementation=attention_kernel(attn_implementation),
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if device is not None:
        model.to(device)
        model.tie_weights()  # some devices (XLA, lazy) get a new parameter per attribute: tied weights come apart
    return model


def attention_kernel(choice: str) -> str:
    """``model.attn_implementation`` as transformers takes it: ``auto`` is flash-attention 2 where its package
    imports and a GPU is there, else PyTorch's scaled-dot-product attention."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
