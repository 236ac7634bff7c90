"""Forks that reuse their root's KV cache (rollouts that branch, on the hf decode loop).

A fork at response position t continues its root's context, the prompt and the root's tokens 0..t-1. Sampling
it from scratch would prefill that context again; instead the roots' decode keeps every row's KV cache as the
row finishes (:class:`RootCaches`, filled by :func:`~prm_rl.rollout.generate.decode_dropping_finished`), and a
fork starts from its root's first columns: only the context's last token is fed again, to get the logits of the
fork's first token. The same decode records the entropy of every sampled token's distribution, where the forks
are chosen, so the roots need no second forward either.

Layout: a fork's cache holds its root's columns 0..C-1 left-aligned (C = prompt width + t - 1) and zeros,
masked out, up to the widest fork's; positions are explicit, so a masked gap changes nothing (rotary positions
are in the cached keys already).
"""
from __future__ import annotations

import torch

from prm_rl.core import token_entropy
from prm_rl.rollout.generate import (Rollout, cache_arguments, can_drop_finished_rows, decode_dropping_finished,
                                     ended_rollout)

__all__ = ["RootCaches", "can_fork_from_cache", "sample_forks"]


def can_fork_from_cache(model: torch.nn.Module, synced_gpus: bool) -> bool:
    """Whether forks of ``model``'s rollouts can start from their roots' caches: the decode loop that drops finished
    rows samples (not ZeRO-3's synced generation), and every cache layer keeps all its columns (no sliding window)."""
    if synced_gpus or not can_drop_finished_rows(model):
        return False
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = getattr(DynamicCache(config=model.config), "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class RootCaches:
    """What a decode keeps for its rows' forks: each row's KV cache from the moment it finished, per layer
    (keys, values) ``[H, C, D]`` over its C = prompt width + response tokens - 1 columns, and ``entropy``
    ``[N, T]``: the entropy of the distribution each response token was drawn from, at the sampling
    temperature (top-p aside), on the model's device."""

    def __init__(self, n_rows: int, max_new_tokens: int, temperature: float):
        self.temperature = temperature
        self.entropy = torch.zeros(n_rows, max_new_tokens)
        self.rows: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * n_rows

    def observe(self, rows: torch.Tensor, step: int, logits: torch.Tensor) -> None:
        """``logits`` [n, V] of the batch's rows ``rows`` [n] predict their response token ``step``."""
        if self.entropy.device != logits.device:
            self.entropy = self.entropy.to(logits.device)
        self.entropy[rows, step] = token_entropy((logits / self.temperature)[:, None])[:, 0].float()

    def keep(self, cache, batch_positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Keep the cache of the batch's ``batch_positions`` (rows ``rows``), copied out of the batch's tensors."""
        per_layer = [(layer.keys.index_select(0, batch_positions), layer.values.index_select(0, batch_positions))
                     for layer in cache.layers]
        for i, row in enumerate(rows.tolist()):
            self.rows[row] = [(keys[i], values[i]) for keys, values in per_layer]

    def fork_cache(self, model: torch.nn.Module, roots_of: list[int], columns: list[int]):
        """A cache of one row per fork: root ``roots_of[f]``'s first ``columns[f]`` columns, zeros after them."""
        from transformers import DynamicCache

        width = max(1, max(columns))
        cache = DynamicCache(config=model.config)
        for index in range(len(self.rows[roots_of[0]])):
            keys, values = self.rows[roots_of[0]][index]
            forked_keys = keys.new_zeros((len(roots_of), keys.shape[0], width, keys.shape[2]))
            forked_values = values.new_zeros((len(roots_of), values.shape[0], width, values.shape[2]))
            for f, (root, c) in enumerate(zip(roots_of, columns)):
                forked_keys[f, :, :c], forked_values[f, :, :c] = (x[:, :c] for x in self.rows[root][index])
            cache.update(forked_keys, forked_values, index)
        return cache


@torch.no_grad()
def sample_forks(model: torch.nn.Module, caches: RootCaches, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 response_ids: torch.Tensor, roots_of: torch.Tensor, starts: torch.Tensor, *, max_new_tokens: int,
                 eos_id: int, pad_id: int, temperature: float, top_p: float) -> Rollout:
    """F forks, each a response sampled after its root's prompt and first ``starts[f]`` tokens (the rollout's
    prompt rows are the roots'; the responses hold the fork's own tokens only, on the model's device).

    ``prompt_ids``/``prompt_mask`` [R, P] and ``response_ids`` [R, T0] are the roots as ``caches`` saw them
    (left-padded prompts, on the model's device); ``roots_of`` [F] indexes them, ``starts`` [F] are fork
    positions (0: a fresh sample of the prompt). Draws as :func:`~prm_rl.rollout.generate.generate` would on the
    prefix, up to float rounding of the reused cache.
    """
    was_training = model.training
    model.eval()
    width = prompt_ids.shape[1]
    roots, starts = roots_of.tolist(), starts.tolist()
    # the cache keeps the context but its last token, which is fed again for the fork's first logits
    columns = [width + t - 1 for t in starts]
    cache = caches.fork_cache(model, roots, columns)
    span = max(1, max(columns))
    device = prompt_mask.device
    context = torch.cat([prompt_mask, prompt_mask.new_ones(len(prompt_mask), max(0, span - width))], dim=1)[:, :span]
    mask = context[roots_of] * (torch.arange(span, device=device)[None] < torch.tensor(columns, device=device)[:, None])
    last = torch.stack([response_ids[r, t - 1] if t else prompt_ids[r, -1] for r, t in zip(roots, starts)])
    position = (prompt_mask.sum(dim=1)[roots_of] + torch.tensor(starts, device=device) - 1)[:, None]
    mask = torch.cat([mask, mask.new_ones(len(roots), 1)], dim=1)
    logits = model(input_ids=last[:, None], attention_mask=mask, position_ids=position,
                   **cache_arguments(model, cache)).logits[:, -1].float()
    responses = decode_dropping_finished(model, cache, logits, mask, position, max_new_tokens=max_new_tokens,
                                         eos_id=eos_id, pad_id=pad_id, do_sample=True, temperature=temperature,
                                         top_p=top_p)
    model.train(was_training)
    return ended_rollout(prompt_ids[roots_of], prompt_mask[roots_of], responses, eos_id, pad_id)
