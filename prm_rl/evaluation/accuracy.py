"""Held-out accuracy: greedy decoding of every eval prompt, scored by the same verifier as training and labelled
by the same rule (``reward.outcome_labels``)."""
from __future__ import annotations

import math

import torch

from prm_rl import core
from prm_rl.config import RewardSection
from prm_rl.data.sample import Sample, encode_prompts
from prm_rl.engine import dist
from prm_rl.rollout.generate import generate, left_pad
from prm_rl.trainer.stages import decode_responses


@torch.no_grad()
def heldout_accuracy(model, tokenizer, samples: list[Sample], scorer, *, batch_size: int, max_new_tokens: int,
                     synced_gpus: bool, reward: RewardSection, sampler=None) -> float:
    """Mean outcome label of greedy responses over ``samples`` (split over ranks): with ``reward.outcome_labels``
    score the mean score itself (a fraction for a verifier's [0, 1] scores, a mean logit for a reward model's), else
    the mean of :func:`prm_rl.core.outcome_labels` by ``reward.label_threshold`` (threshold: the share above it).
    ``sampler``: a :class:`~prm_rl.rollout.vllm_engine.VllmSampler` holding ``model``'s weights decodes instead."""
    mine = samples[dist.rank()::dist.world_size()]
    # Same number of generate() calls on every rank: ZeRO-3 gathers parameters collectively.
    n_batches = math.ceil(math.ceil(len(samples) / dist.world_size()) / batch_size)
    total = 0.0
    for b in range(n_batches):
        part = mine[b * batch_size:(b + 1) * batch_size]
        batch = part or mine[:1] or samples[:1]  # a stand-in keeps a rank with nothing left in step
        prompts = encode_prompts(tokenizer, [s.prompt for s in batch])
        greedy = dict(max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                      do_sample=False)
        if sampler is None:
            out = generate(model, *left_pad(prompts, tokenizer.pad_token_id), synced_gpus=synced_gpus, **greedy)
        else:
            out = sampler.rollout(prompts, **greedy)
        if part:
            scores = torch.tensor(scorer.score(part, decode_responses(tokenizer, out, range(len(part)))).scores,
                                  dtype=torch.float64)
            if reward.outcome_labels != "score":  # score: the scores as they are (RLOO on a reward model's logits)
                scores = core.outcome_labels(scores, reward.outcome_labels, reward.label_threshold)
            total += float(scores.sum())
    return float(dist.all_reduce_sum(torch.tensor([total], dtype=torch.float64)).item()) / len(samples)
