"""Monte-Carlo step values (the baseline of python -m prm_rl.cli.mc_values) on hand-derived cases."""
from __future__ import annotations

import pytest
import torch

from prm_rl import core
from prm_rl.data import arithmetic
from prm_rl.data.sample import Sample, text_rollout
from prm_rl.models.tiny import build_char_tokenizer
from prm_rl.trainer import stages
from prm_rl.evaluation.prm_quality import HeldoutGroups


def test_soft_is_the_share_of_correct_completions_and_hard_is_any():
    successes = torch.tensor([[[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])  # [N=1, S=2, K=4]
    soft, hard = core.monte_carlo_values(successes)
    assert soft.tolist() == [[0.75, 0.0]] and hard.tolist() == [[1.0, 0.0]]
    soft, _ = core.monte_carlo_values(torch.tensor([[0.5, 1.0]]))  # a partial score is not a success
    assert soft.tolist() == [0.5]


def test_value_increments_start_from_the_bare_prompt():
    values = torch.tensor([[0.75, 1.0, 1.0], [0.0, 0.25, 0.0]])
    delta = core.value_increments(values, torch.tensor([0.5, 0.5]))
    assert delta.tolist() == [[0.25, 0.25, 0.0], [-0.5, 0.25, -0.25]]


@pytest.fixture()
def two_responses():
    """One prompt, a right response and one whose first step is wrong (3+4=8), three steps each."""
    from prm_rl.evaluation.monte_carlo import step_prefixes

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    sample = Sample("3+4*2=?\n", arithmetic.TASK_NAME, {"answer": "14"})
    responses = ["3+4=7\n7*2=14\n\\boxed{14}", "3+4=8\n8*2=16\n\\boxed{16}"]
    outcomes = torch.tensor([1.0, 0.0])
    groups = HeldoutGroups(text_rollout(tokenizer, [sample.prompt] * 2, responses), outcomes, outcomes,
                           [sample, sample], responses, k=2)
    valid, prefixes = step_prefixes(groups, tokenizer, stages.step_end_table(tokenizer, "\n"))
    return tokenizer, groups, valid, prefixes


def test_every_step_but_the_last_is_a_prefix_ending_at_its_delimiter(two_responses):
    tokenizer, _, valid, prefixes = two_responses
    assert valid.sum(dim=1).tolist() == [3, 3]
    assert [(row, step) for row, step, _ in prefixes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert tokenizer.decode(prefixes[1][2]).endswith("3+4*2=?\n3+4=7\n7*2=14\n")
    assert tokenizer.decode(prefixes[2][2]).endswith("3+4*2=?\n3+4=8\n")


def test_step_metrics_of_hand_made_completions(two_responses):
    """Soft values: right response [0, 1, 1 (its outcome)], wrong one [0 (its first wrong step), 0.25, 0]. The
    judged steps are the right response's three (positives: 0, 1, 1) and the wrong one's first (negative: 0):
    AUROC = (1/2 + 1 + 1) / 3. Increments from V_0 = 0.5: [-0.5, 1, 0] and [-0.5, ...]: (1/2 + 1 + 1) / 3 too."""
    from prm_rl.evaluation.monte_carlo import mc_report

    _, groups, valid, prefixes = two_responses
    successes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    report = mc_report(groups, valid, prefixes, successes)
    assert report["soft"]["step_auroc_value"] == pytest.approx(2.5 / 3)
    assert report["soft"]["step_auroc_increment"] == pytest.approx(2.5 / 3)
    assert report["soft"]["first_error_hit_rate"] == 1.0 and report["soft"]["first_error_n"] == 1
    assert report["hard"]["step_auroc_value"] == pytest.approx(2.5 / 3)


def test_completions_are_verified_against_the_prefix_they_continue(two_responses):
    """With a random tiny model, a completion of the right response's prefix up to its last line can only be
    right if it writes the boxed answer; so check the bookkeeping: K scores per prefix, each 0 or 1."""
    from prm_rl.evaluation.monte_carlo import rollout_successes
    from prm_rl.models.tiny import TinyModelConfig, build_tiny_model
    from prm_rl.rewards import build_scorer

    tokenizer, groups, _, prefixes = two_responses
    model = build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                             tokenizer, seed=0).eval()
    torch.manual_seed(0)
    with build_scorer() as scorer:
        successes, spent = rollout_successes(model, tokenizer, scorer, groups, prefixes, 3, temperature=1.0,
                                             max_new_tokens=40, batch_size=5)
    assert successes.shape == (4, 3) and set(successes.flatten().tolist()) <= {0.0, 1.0}
    assert spent["completions"] == 12 and spent["flops"] > 0 and spent["generated_tokens"] > 0


def test_the_report_runs_without_gradients_and_leaves_the_callers_autograd_on():
    """The tools' library functions compute under no_grad for their own call only (they once switched autograd
    off for the whole process: a test after them that trains would have learned nothing)."""
    from pathlib import Path

    from prm_rl.evaluation.monte_carlo import monte_carlo_report

    policy = next((Path(__file__).parents[1] / "fixtures" / "warm_start").iterdir())  # the suite's tiny SFT
    report = monte_carlo_report(str(policy), [], num_prompts=2, n=2, rollouts=1, seed=0, temperature=1.0,
                                max_new_tokens=8, batch_size=4)
    assert report and torch.is_grad_enabled()
