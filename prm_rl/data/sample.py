"""The unit every dataset yields and every verifier reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt with whatever its verifier needs to judge a response.

    prompt: the exact text fed to the model (chat template and instruction suffix already applied).
    task:   which verifier judges it ("arithmetic", "math", "code", or a custom name).
    fields: verifier inputs, e.g. {"answer": "57"} for math or {"tests": [...]} for code.
    """

    prompt: str
    task: str
    fields: dict[str, Any] = field(default_factory=dict)


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts, the one way the trainer tokenizes them.

    The tokenizer adds its special tokens (e.g. BOS) unless the text already starts with the BOS token,
    as a chat template writes it: no prompt gets two.
    """
    bos = tokenizer.bos_token
    templated = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list[list[int] | None] = [None] * len(prompts)
    for flag in (False, True):
        where = [i for i, t in enumerate(templated) if t == flag]
        if where:
            ids = tokenizer([prompts[i] for i in where], add_special_tokens=not flag)["input_ids"]
            for i, row in zip(where, ids):
                out[i] = row
    return out  # type: ignore[return-value]


def text_rollout(tokenizer, prompts: list[str], responses: list[str]):
    """A :class:`~prm_rl.rollout.generate.Rollout` of given texts: rendered prompts (as :func:`encode_prompts`
    reads them) left-padded, responses tokenized without special tokens and closed by EOS, as if generated."""
    import torch

    from prm_rl.rollout.generate import Rollout, left_pad

    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    encoded = [ids + [tokenizer.eos_token_id] for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]
    width = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        response_ids[i, :len(ids)] = torch.tensor(ids)
        response_mask[i, :len(ids)] = 1
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, torch.zeros(len(encoded), dtype=torch.bool))
