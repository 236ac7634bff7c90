"""Compute cost in FLOPs, the 2N / 6N rule (Kaplan et al. 2020): a forward pass costs 2 FLOPs per parameter
per token it processes, a training step (forward + backward) 6. Sampling with the KV cache processes each
prompt token once (prefill) and each generated token once. Attention's own FLOPs are left out, as they are
small next to the weights' at these lengths; the figures compare methods, they do not time a machine.
"""
from __future__ import annotations

import torch

from prm_rl.rollout.generate import Rollout


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a model (the full count of ZeRO-3 partitioned ones); tied weights counted once."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def tokens(batch: Rollout) -> int:
    """Prompt plus response tokens of a batch (padding excluded): what one forward pass over it processes."""
    return int(batch.prompt_mask.sum() + batch.response_mask.sum())


def forward_flops(parameters: int, processed_tokens: int) -> float:
    return 2.0 * parameters * processed_tokens


def training_flops(parameters: int, processed_tokens: int) -> float:
    return 6.0 * parameters * processed_tokens
