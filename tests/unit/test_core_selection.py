"""pass@k, best-of-N and voting on hand-derived cases (exact where every subset is the whole set or ties decide)."""
import math

import pytest
import torch

from prm_rl import core


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pass_at_k_matches_the_closed_form():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(core.pass_at_k(correct, 1), torch.tensor([0.25, 0.5, 0.0, 1.0]))
    # k = 2 of n = 4 with c = 1: 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    torch.testing.assert_close(core.pass_at_k(correct, 2), torch.tensor([0.5, 1 - 1 / 6, 0.0, 1.0]))
    with pytest.raises(ValueError):
        core.pass_at_k(correct, 5)


def test_best_of_all_n_picks_the_top_score_and_splits_ties():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.5, 0.2], [1.0, 1.0, 1.0]])
    correct = torch.tensor([[0, 1, 0], [1, 0, 1], [1, 0, 0]])
    got = core.best_of_n(scores, correct, size=3, draws=5, generator=gen())
    torch.testing.assert_close(got, torch.tensor([1.0, 0.5, 1 / 3]))


def test_best_of_one_is_the_mean_accuracy_in_expectation():
    correct = torch.tensor([[1, 0, 0, 0]] * 50)
    got = core.best_of_n(torch.randn(50, 4, generator=gen(1)), correct, size=1, draws=400, generator=gen())
    assert float(got.mean()) == pytest.approx(0.25, abs=0.02)


def test_majority_and_weighted_votes():
    # One prompt: answers A, A, B; A is wrong, B is right.
    answers, correct = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 0, 1]])
    ones = torch.ones(1, 3)
    assert float(core.vote(answers, correct, ones, 3, 4, gen())[0]) == 0.0  # majority: A
    weights = torch.tensor([[0.1, 0.1, 0.9]])  # a PRM that trusts B outvotes the majority
    assert float(core.vote(answers, correct, weights, 3, 4, gen())[0]) == 1.0
    tie = torch.tensor([[0.5, 0.0, 0.5]])  # A (0.5 + 0) vs B (0.5): a tie, half credit
    assert float(core.vote(answers, correct, tie, 3, 4, gen())[0]) == 0.5
    no_answer = torch.tensor([[-1, -1, -1]])
    assert float(core.vote(no_answer, torch.zeros(1, 3), ones, 3, 4, gen())[0]) == 0.0


def test_bootstrap_interval_brackets_the_mean():
    per_prompt = torch.tensor([0.0, 1.0] * 100)
    mean, low, high = core.bootstrap_interval(per_prompt, gen())
    assert mean == 0.5 and low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 200), rel=0.2)
