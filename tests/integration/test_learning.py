"""Learning happens: a short real PRIME run on the tiny task must raise the policy's reward and held-out accuracy
and teach the PRM to rank responses and find wrong steps, so that a change that silently stops either fails here.

Every other run in the suite checks plumbing and exactness; this one checks the result. The run is deterministic
(fixed seeds, CPU); each margin lies below the smallest effect measured over seeds 0, 1, 2 of this exact setting
and above a control run that learns nothing (docs/results.md, "The learning test"), so the test fails on a loss
of learning, not on another seed's luck.
"""
from __future__ import annotations

import json

import pytest

from tiny_runs import all_rows, launch, metrics

# The built-in job's learning settings over the tiny runs' (which are set for speed, not learning): a batch of
# 32 prompts x 8 samples, the main job's filter band, learning rates and one optimiser step per step.
LEARNING = ["rollout.prompts_per_step=32", "rollout.samples_per_prompt=8", "policy.learning_rate=5e-5",
            "prm.learning_rate=1e-4", "policy.mini_batches=1", "prm.mini_batches=1", "filter.low=0.2",
            "filter.high=0.8", "trainer.max_steps=20", "prm_eval.num_prompts=16", "prm_eval.samples_per_prompt=8"]
FIRST, LAST = slice(0, 5), slice(10, 20)  # steps 1-5 against steps 11-20
# Measured at step 20, seeds 0/1/2, and in a control run whose learning rates are 1e-12 (nothing learns; the
# PRM's rewards then differ from its reference's by rounding only, which breaks ties at random):
REWARD_GAIN = 0.04  # mean sampled accuracy, steps 11-20 over 1-5: 0.084/0.133/0.103; control 0.005
HELDOUT_GAIN = 0.03  # greedy held-out accuracy (32 prompts), final over start: +0.125/+0.156/+0.063; control 0
RANKING_ACC = 0.6  # the PRM's within-group ranking accuracy: 0.720/0.762/0.692; control 0.486
STEP_AUROC = 0.555  # the PRM's step AUROC (0.5 at the start, where it equals its reference): 0.590/0.630/0.573;
#                     control 0.542: the margin is thin, the PRM finds wrong steps only a little after 20 steps


def reward_gain(rows: list[dict]) -> float:
    """Mean sampled accuracy on the training prompts (before the filter) of steps 11-20 minus that of steps 1-5."""
    acc = [r["acc/before_filter"] for r in rows]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(acc[LAST]) - mean(acc[FIRST])


@pytest.mark.slow
def test_a_short_prime_run_raises_the_reward_and_the_prms_step_auroc(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, LEARNING)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(run_dir)
    assert len(rows) == 20

    summary = json.loads((run_dir / "summary.json").read_text())
    assert reward_gain(rows) >= REWARD_GAIN, [round(r["acc/before_filter"], 3) for r in rows]
    assert summary["eval_accuracy_final"] - summary["eval_accuracy_start"] >= HELDOUT_GAIN, summary
    # The PRM judged on the starting model's samples (drawn once, so every change is the PRM's own).
    start, final = all_rows(run_dir)[0], summary["prm_eval_final"]
    assert start["prm_eval_sft/step_auroc"] == start["prm_eval_sft/ranking_acc"] == 0.5
    assert final["prm_eval_sft/ranking_acc"] >= RANKING_ACC, final
    assert final["prm_eval_sft/step_auroc"] >= STEP_AUROC, final
