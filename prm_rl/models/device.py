"""Where a model computes, so that what is fed to it can be put there first.

Rollouts, scores and advantages live in host memory between stages (they are gathered over ranks, filtered,
buffered and checkpointed there); a model may sit on ``cuda:N``, where a host tensor beside its own fails. Every
function that feeds a model moves its inputs with :func:`input_device` once per micro-batch, and hands its results
back in host memory unless the caller needs them where the model is (a loss to differentiate).
"""
from __future__ import annotations

import torch


def input_device(model: torch.nn.Module) -> torch.device:
    """The device ``model``'s inputs must be on: a DeepSpeed engine's own device (under ZeRO-3 with parameter
    offload the weights live in host memory but compute on the accelerator), else a Hugging Face model's
    ``device``, else that of its first parameter (a LoRA view, a plain module)."""
    device = getattr(model, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    return next(model.parameters()).device
