"""Batched sampling from a causal LM with the KV cache (Hugging Face ``generate``).

The output layout is the one every later stage uses: left-padded prompts ``[N, P]`` followed by
right-padded responses ``[N, T]``, so the logits at positions ``P-1 .. P+T-2`` predict the response tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, T] right-padded with pad_token_id
    response_mask: torch.Tensor  # [N, T] 1 on generated tokens up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "Rollout":
        return Rollout(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [N, P], mask [N, P]), padded on the left so generation continues every row."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def response_mask_from_ids(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of tokens up to and including the first EOS, and whether each row never emitted EOS."""
    is_eos = response_ids == eos_id
    seen_eos_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    truncated = ~is_eos.any(dim=1)
    return (~seen_eos_before).long(), truncated


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample (or greedily decode) one response per prompt row.

    ``synced_gpus`` must be True under ZeRO-3 with several ranks: parameters are gathered collectively at
    every forward, so a rank that finished early has to keep stepping until all ranks are done.
    top_k is disabled so that sampling draws from exactly the distribution the PPO ratio is computed under.
    """
    was_training = model.training
    model.eval()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(
        do_sample=False, temperature=None, top_p=None, top_k=None
    )
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        synced_gpus=synced_gpus,
        **sampling,
    )
    model.train(was_training)
    response_ids = out[:, prompt_ids.shape[1]:]
    response_mask, truncated = response_mask_from_ids(response_ids, eos_id)
    response_ids = response_ids.masked_fill(response_mask == 0, pad_id)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask, truncated)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different prompt/response widths: prompts re-padded on the left, responses on the right."""
    p_width = max(r.prompt_ids.shape[1] for r in parts)
    t_width = max(r.response_ids.shape[1] for r in parts)

    def pad(x: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
        fill = x.new_full((x.shape[0], width - x.shape[1]), value)
        return torch.cat([fill, x] if left else [x, fill], dim=1)

    return Rollout(
        torch.cat([pad(r.prompt_ids, p_width, pad_id, True) for r in parts]),
        torch.cat([pad(r.prompt_mask, p_width, 0, True) for r in parts]),
        torch.cat([pad(r.response_ids, t_width, pad_id, False) for r in parts]),
        torch.cat([pad(r.response_mask, t_width, 0, False) for r in parts]),
        torch.cat([r.truncated for r in parts]),
    )
