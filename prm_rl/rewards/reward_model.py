"""A learned reward model as an outcome scorer, beside the verifiers: a Hugging Face sequence-classification
checkpoint (``AutoModelForSequenceClassification`` with one output) whose logit on prompt + response is the score.

Scores are any real, not [0, 1]: outcome-only estimators read them as they are; the PRM's labels and the
accuracy-band filter read ``reward.outcome_labels`` of them (docs/algorithm.md, "2. Verify"). Each rank loads its
own copy on its own device (the GPU it trains on, else the CPU) the first time it scores, and scores its rows in
batches, in the caller's thread: no worker pool and no time limit. torch and transformers load only then.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["RewardModelOptions", "RewardModel"]


@dataclass(frozen=True)
class RewardModelOptions:
    path: str  # checkpoint directory (or Hub id) of the sequence-classification model and its tokenizer
    batch_size: int = 8  # texts per forward
    max_length: int | None = None  # keep each text's last this-many tokens (the response's end); None: all
    chat_template: bool = False  # score the tokenizer's chat template of [user: prompt, assistant: response]


class RewardModel:
    """``score(prompts, responses)`` -> one float per pair (NaN where the model's output was not finite)."""

    def __init__(self, options: RewardModelOptions, device: Any = None) -> None:
        self.options = options
        self.device = device  # None: this rank's device (prm_rl.engine.dist.device), decided at loading
        self._model = self._tokenizer = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from prm_rl.engine import dist

        path = self.options.path
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype="auto")
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {path}: has {model.config.num_labels} outputs; a reward model has one "
                             "(num_labels=1), its logit the score")
        if tokenizer.pad_token is None:  # batches need padding; the model finds each text's end by the pad id
            if tokenizer.eos_token is None:
                raise ValueError(f"reward model {path}: its tokenizer has neither a pad nor an EOS token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"  # a long text keeps its end, where the model reads the score
        self._model = model.to(self.device if self.device is not None else dist.device()).eval()
        self._tokenizer = tokenizer

    def _text(self, prompt: str, response: str) -> str:
        if not self.options.chat_template:
            return prompt + response
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self._tokenizer.apply_chat_template(messages, tokenize=False)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        from prm_rl.models.device import input_device

        if self._model is None:
            self._load()
        o, on = self.options, input_device(self._model)
        texts = [self._text(p, r) for p, r in zip(prompts, responses)]
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), o.batch_size):
                enc = self._tokenizer(texts[start:start + o.batch_size], padding=True, return_tensors="pt",
                                      truncation=o.max_length is not None, max_length=o.max_length,
                                      add_special_tokens=not o.chat_template)  # a template adds its own
                logits = self._model(input_ids=enc["input_ids"].to(on),
                                     attention_mask=enc["attention_mask"].to(on)).logits
                out.extend(float(x) if math.isfinite(x) else math.nan for x in logits[:, 0].float().cpu().tolist())
        return out
