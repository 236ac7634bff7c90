"""A stand-in for a hub checkpoint, made on the spot: a byte-level BPE tokenizer trained on the texts it will
see, with special tokens and a chat template as Qwen's, and a randomly initialised Qwen2-architecture causal LM.

This is the real-model path (``model.path=Qwen/... data.train=gsm8k.jsonl``) without a hub: tests run the trainer
through it on both rollout engines, and bench/rollout_throughput.py times engines on models of real shapes.
Nothing downstream may tell it from a downloaded checkpoint; nothing in it assumes the built-in char tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

# Qwen's chat layout: <|im_start|>role\ncontent<|im_end|>\n, and the assistant's turn ends with <|im_end|> (EOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Qwen2Shape:
    """The sizes of a Qwen2-architecture model (tied embeddings, grouped-query attention)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int  # rows of the embedding; at least the tokenizer's size (Qwen pads it too)
    max_positions: int = 2048


SHAPES = {
    "test": Qwen2Shape(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=192,
                       vocab_size=512),  # ~0.2M parameters: the suite's real-model runs
    "30m": Qwen2Shape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=2, intermediate_size=1536,
                      vocab_size=8192),  # ~30M parameters: the CPU throughput benchmark
    "qwen2.5-0.5b": Qwen2Shape(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                               intermediate_size=4864, vocab_size=151936, max_positions=4096),  # GPU benchmark
    "qwen2.5-1.5b": Qwen2Shape(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                               intermediate_size=8960, vocab_size=151936, max_positions=4096),
}


def build_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (``vocab_size`` tokens at most), with Qwen's special tokens
    (pad ``<|endoftext|>``, EOS ``<|im_end|>``) and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_qwen2(shape: Qwen2Shape, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2 causal LM of ``shape`` (weights depend only on ``seed``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=max(shape.vocab_size, len(tokenizer)), hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config)


def write_checkpoint(directory: Path, texts: Iterable[str], shape: Qwen2Shape | str, seed: int = 0) -> Path:
    """Train the tokenizer on ``texts``, build the model, save both to ``directory`` as a hub checkpoint is laid
    out; returns ``directory``. ``shape``: a :class:`Qwen2Shape` or a name in :data:`SHAPES`."""
    shape = SHAPES[shape] if isinstance(shape, str) else shape
    tokenizer = build_bpe_tokenizer(texts, min(shape.vocab_size, 50_000))
    model = build_qwen2(shape, tokenizer, seed)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
