"""One forward pass of a causal LM over (prompt, response) rows, read out per response token."""
from __future__ import annotations

import torch

from prm_rl.core import token_entropy, token_logprobs
from prm_rl.rollout.generate import Rollout


def response_logprobs(model, batch: Rollout, temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(response token | prefix) for every response position: ``[n, T]`` (and entropies ``[n, T]``).

    Position ids count real tokens only, matching what ``generate`` used for the left-padded prompts.
    Logits are divided by the sampling temperature so the PPO ratio compares the distributions that
    were actually sampled from.
    """
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    prompt_len = batch.prompt_ids.shape[1]
    logits = logits[:, prompt_len - 1:-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, batch.response_ids)
    entropy = None
    if with_entropy:  # differentiable only when an entropy bonus is in the loss; otherwise just logged
        entropy = token_entropy(logits if entropy_grad else logits.detach())
    return logp, entropy
