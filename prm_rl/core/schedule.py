"""Learning-rate schedules by trainer step: linear warm-up, then constant, linear or cosine decay to a floor.

Pure arithmetic of the step number, so a resumed run sets the rate of its next step from the checkpoint's step
alone (nothing else to save). The conventions are Hugging Face's ``get_*_schedule_with_warmup`` (and so TRL's and
veRL's): the multiplier for the update after ``s`` completed steps is s / W during W warm-up steps, then decays
over the remaining steps (tested against transformers' own functions).
"""
from __future__ import annotations

import math

__all__ = ["LR_DECAYS", "warmup_steps_of", "lr_multiplier"]

LR_DECAYS = ("constant", "linear", "cosine")  # policy.lr_schedule.decay, prm.lr_schedule.decay


def warmup_steps_of(warmup: float, total_steps: int) -> int:
    """Warm-up length in steps: ``warmup`` itself, or, below 1, that share of ``total_steps`` (as transformers
    reads ``warmup_steps``), rounded up."""
    return math.ceil(warmup * total_steps) if 0 < warmup < 1 else int(warmup)


def lr_multiplier(step: int, total_steps: int, decay: str, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """The share of the peak learning rate that trainer step ``step`` (1-based) updates with.

    Formula, with s = step - 1 steps done and W = ``warmup_steps``: s / W while s < W; then, with progress
    p = (s - W) / (total_steps - W), ``constant`` 1, ``linear`` max(0, 1 - p), ``cosine`` (1 + cos(pi p)) / 2,
    each lifted onto the floor: min_ratio + (1 - min_ratio) * that (``min_ratio`` 0: Hugging Face's schedules).
    """
    s = step - 1
    if s < warmup_steps:
        return s / warmup_steps
    if decay == "constant":
        return 1.0
    progress = (s - warmup_steps) / max(1, total_steps - warmup_steps)
    if decay == "linear":
        factor = max(0.0, 1.0 - progress)
    elif decay == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"decay must be one of {LR_DECAYS}, got {decay!r}")
    return min_ratio + (1.0 - min_ratio) * factor
