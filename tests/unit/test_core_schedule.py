"""Learning-rate schedules (prm_rl/core/schedule.py): hand values, and Hugging Face's schedulers as the second
implementation."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from prm_rl.core import lr_multiplier, warmup_steps_of


def test_hand_values_of_a_linear_and_a_floored_cosine_schedule():
    # 2 warm-up steps of 6: the updates after 0 and 1 steps run at 0 and 1/2, then the decay over 4 steps
    assert [lr_multiplier(k, 6, "linear", 2) for k in range(1, 7)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    assert [lr_multiplier(k, 6, "constant", 2) for k in range(1, 7)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4))  # cosine at p = 3/4, lifted onto a floor of 0.1
    assert lr_multiplier(6, 6, "cosine", 2, min_ratio=0.1) == pytest.approx(last)
    assert lr_multiplier(3, 6, "cosine", 2, min_ratio=0.1) == 1.0
    assert [lr_multiplier(k, 3, "constant", 0) for k in (1, 2, 3)] == [1.0, 1.0, 1.0]  # the default: no schedule


def test_a_warmup_below_one_is_a_share_of_the_steps():
    assert (warmup_steps_of(0.1, 140), warmup_steps_of(0.05, 30), warmup_steps_of(3, 140),
            warmup_steps_of(0, 140)) == (14, 2, 3, 0)


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
def test_schedules_follow_transformers_step_by_step(decay):
    total, warmup = 20, 5
    optimiser = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = {"constant": lambda: get_constant_schedule_with_warmup(optimiser, warmup),
          "linear": lambda: get_linear_schedule_with_warmup(optimiser, warmup, total),
          "cosine": lambda: get_cosine_schedule_with_warmup(optimiser, warmup, total)}[decay]()
    for step in range(1, total + 1):
        assert lr_multiplier(step, total, decay, warmup) == pytest.approx(optimiser.param_groups[0]["lr"], abs=1e-12)
        optimiser.step()
        hf.step()


def test_an_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        lr_multiplier(9, 10, "step", 0)
