"""The built-in model: a character-level tokenizer and a small Llama-architecture causal LM.

Both are ordinary Hugging Face objects saved in the standard format (``tokenizer.json`` +
``config.json`` + safetensors), so everything downstream loads them with ``AutoTokenizer`` /
``AutoModelForCausalLM`` exactly as it would load a hub checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the config schema (model.tiny) imports this module
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]


@dataclass
class TinyModelConfig:
    """Shape of the built-in model, ``model.tiny.*``; the defaults give about one million parameters
    (prm_rl/recipes/base.yaml holds the same values, tests/unit/test_config.py proves it)."""

    hidden_size: int = 128  # width of the residual stream
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # attention heads (as many key/value heads: no grouped-query attention)
    intermediate_size: int = 512  # width of each MLP
    max_positions: int = 256  # longest prompt + response, in tokens (characters)


def build_char_tokenizer(characters: list[str]) -> PreTrainedTokenizerFast:
    """One token per character of ``characters`` (ids in that order, after the special tokens); decoding
    concatenates characters back without separators. Any other character encodes as ``<unk>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(characters)) != len(characters):
        raise ValueError("build_char_tokenizer: characters must be distinct")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(characters))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast | None = None):
    """The ``LlamaConfig`` of the built-in model sized by ``cfg`` (``tokenizer``: its vocabulary and special
    tokens; None gives the architecture alone, e.g. to list its module names)."""
    from transformers import LlamaConfig

    special = {} if tokenizer is None else dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    return LlamaConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                       max_position_embeddings=cfg.max_positions, tie_word_embeddings=True, **special)


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama-architecture LM sized by ``cfg`` (weights depend only on ``seed``)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(tiny_config(cfg, tokenizer))
