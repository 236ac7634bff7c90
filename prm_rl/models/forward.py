"""One forward pass of a causal LM over (prompt, response) rows, read out per response token."""
from __future__ import annotations

import inspect

import torch

from prm_rl.core import token_entropy, token_logprobs
from prm_rl.models.device import input_device
from prm_rl.rollout.generate import Rollout


def response_logprobs(model, batch: Rollout, temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(response token | prefix) for every response position: ``[n, T]`` (and entropies ``[n, T]``).

    Position ids count real tokens only, matching what ``generate`` used for the left-padded prompts.
    Logits are divided by the sampling temperature so the PPO ratio compares the distributions that
    were actually sampled from. Columns that are padding in every row (the left of the prompts, the right of
    the responses) are cut before the forward, so a micro-batch of short rows runs a short forward; outputs
    are 0 past each row's response, so they do not depend on which rows shared a micro-batch.

    ``batch`` may be in host memory: it is moved to the model's device here, and the outputs stay there (a loss
    built from them is differentiated there).
    """
    batch = batch.to(input_device(model))
    valid = batch.response_mask.bool()
    logp, entropy = _forward(model, _trimmed(batch), temperature, with_entropy, entropy_grad)
    pad = valid.shape[1] - logp.shape[1]
    logp = torch.nn.functional.pad(logp, (0, pad)).masked_fill(~valid, 0.0)
    if entropy is not None:
        entropy = torch.nn.functional.pad(entropy, (0, pad)).masked_fill(~valid, 0.0)
    return logp, entropy


def _trimmed(batch: Rollout) -> Rollout:
    """Drop prompt columns that are padding in every row and response columns past the longest response."""
    used = batch.prompt_mask.any(dim=0).nonzero()
    first = int(used[0]) if used.numel() else batch.prompt_mask.shape[1] - 1
    first = min(first, batch.prompt_mask.shape[1] - 1)  # keep one prompt column: it predicts response token 1
    longest = max(1, int(batch.response_mask.sum(dim=1).max())) if batch.response_mask.numel() else 1
    return Rollout(batch.prompt_ids[:, first:], batch.prompt_mask[:, first:], batch.response_ids[:, :longest],
                   batch.response_mask[:, :longest], batch.truncated)


def _forward(model, batch: Rollout, temperature: float, with_entropy: bool,
             entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    width = batch.response_ids.shape[1]
    # Only the positions that predict a response token need logits: [n, T, V] instead of [n, P + T, V] (with a
    # 150k vocabulary and long prompts, most of the forward's memory). A model that cannot skip them computes all.
    keep = {"logits_to_keep": width + 1} if _keeps_logits(model) else {}
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **keep).logits
    logits = logits[:, -(width + 1):-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, batch.response_ids)
    entropy = None
    if with_entropy:  # differentiable only when an entropy bonus is in the loss; otherwise just logged
        entropy = token_entropy(logits if entropy_grad else logits.detach())
    return logp, entropy


def _keeps_logits(model) -> bool:
    """Whether the (possibly engine-wrapped) model's forward takes ``logits_to_keep`` (transformers' causal LMs)."""
    return "logits_to_keep" in inspect.signature(getattr(model, "module", model).forward).parameters
