"""Credit assignment of dense rewards (sum / min / softmin, PURE) and SPRO's masked step advantage, on
hand-derived values."""
from __future__ import annotations

import math

import pytest
import torch

from prm_rl.core.advantages import discounted_returns
from prm_rl.core.credit import credit_rewards, masked_step_advantage

REWARDS = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, 1.0, 0.0, 0.0]])
TOKENS = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 1 has two valid tokens


def test_sum_keeps_the_rewards_and_zeroes_the_padding():
    assert credit_rewards(REWARDS, TOKENS, "sum").tolist() == [[0.5, -1.0, 2.0, 0.0], [3.0, 1.0, 0.0, 0.0]]


def test_min_returns_are_the_worst_reward_ahead():
    """Row 0: G = (min(.5,-1,2,0), min(-1,2,0), min(2,0), 0) = (-1, -1, 0, 0); row 1: (1, 1)."""
    credited = credit_rewards(REWARDS, TOKENS, "min")
    returns = discounted_returns(credited, TOKENS, 1.0)
    assert returns.tolist() == [[-1.0, -1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    assert credited.tolist() == [[0.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]


def test_min_ranges_over_step_ends_only():
    """Rewards on step ends (positions 1 and 3); the zeros between them are not rewards: G = (-1, -1, 2, 2)."""
    rewards = torch.tensor([[0.0, -1.0, 0.0, 2.0]])
    ends = torch.tensor([[0, 1, 0, 1]])
    returns = discounted_returns(credit_rewards(rewards, ends, "min"), torch.ones_like(ends), 1.0)
    assert returns.tolist() == [[-1.0, -1.0, 2.0, 2.0]]


def test_softmin_weights_each_reward_by_its_softmax_of_minus_r_over_t():
    t = 0.5
    credited = credit_rewards(REWARDS, TOKENS, "softmin", temperature=t)
    row0 = [0.5, -1.0, 2.0, 0.0]
    z = sum(math.exp(-r / t) for r in row0)
    assert credited[0].tolist() == pytest.approx([r * math.exp(-r / t) / z for r in row0])
    z1 = math.exp(-3.0 / t) + math.exp(-1.0 / t)
    assert credited[1].tolist() == pytest.approx([3.0 * math.exp(-6.0) / z1, 1.0 * math.exp(-2.0) / z1, 0.0, 0.0])


def test_softmin_tends_to_the_min_as_the_temperature_falls():
    credited = credit_rewards(REWARDS, TOKENS, "softmin", temperature=1e-3)
    assert credited.sum(dim=1).tolist() == pytest.approx([-1.0, 1.0])


def test_a_row_without_carriers_gets_nothing():
    none = torch.zeros(1, 3, dtype=torch.long)
    for how in ("min", "softmin"):
        assert credit_rewards(torch.ones(1, 3), none, how).tolist() == [[0.0, 0.0, 0.0]]


def test_unknown_credit_is_refused():
    with pytest.raises(ValueError, match="credit must be one of"):
        credit_rewards(REWARDS, TOKENS, "max")


def test_masked_step_advantage_baselines_only_responses_still_running():
    """Group of 2: CPR row 0 = (1, 3, 6) over 3 tokens, row 1 = (2, 2) over 2 tokens.
    t=0: mean (1+2)/2 = 1.5 -> (-0.5, 0.5); t=1: mean (3+2)/2 = 2.5 -> (0.5, -0.5); t=2: only row 0 -> 0."""
    cpr = torch.tensor([[1.0, 3.0, 6.0], [2.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert masked_step_advantage(cpr, mask, 2).tolist() == [[-0.5, 0.5, 0.0], [0.5, -0.5, 0.0]]


def test_carriers_follow_the_granularity():
    from prm_rl.core.credit import reward_carriers

    mask = torch.tensor([[1, 1, 1, 0]])
    ends = torch.tensor([[1, 0, 0, 0]])
    assert reward_carriers(mask, "token", ends, True).tolist() == [[True, True, True, False]]
    assert reward_carriers(mask, "token", ends, False).tolist() == [[True, True, False, False]]
    assert reward_carriers(mask, "step", ends, False).tolist() == [[True, False, True, False]]
    assert reward_carriers(mask, "whole", None, True).tolist() == [[False, False, True, False]]


def test_repeated_ngrams_count_within_a_response():
    from prm_rl.core import repeated_ngram_fraction

    ids = torch.tensor([[1, 2, 1, 2, 1, 2, 9], [1, 2, 3, 4, 5, 6, 7], [1, 2, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 7, [1, 1, 0, 0, 0, 0, 0]])
    # row 0, bigrams: 12 21 12 21 12 29 -> 3 distinct of 6: 0.5 repeated; row 1: none; row 2: one bigram
    assert repeated_ngram_fraction(ids, mask, n=2).tolist() == [0.5, 0.0, 0.0]
    assert repeated_ngram_fraction(ids, mask, n=8).tolist() == [0.0, 0.0, 0.0]  # shorter than n


def test_correlation_is_pearson_and_nan_when_constant():
    from prm_rl.core import correlation

    assert correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])) == pytest.approx(0.9933992)
    assert math.isnan(correlation(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])))


def test_spro_adds_the_masked_step_advantage_to_grpo():
    """Group of 2, outcomes (1, 0): GRPO (1 - .5)/(std .7071 + 1e-6) = +-0.70711. Token rewards row 0 (1, 2, 3),
    row 1 (2, 0) over 2 tokens: CPR (1, 3, 6) and (2, 2); MSA (-0.5, 0.5, 0) and (0.5, -0.5) (see above)."""
    from prm_rl.core import spro_advantages

    rewards = torch.tensor([[1.0, 2.0, 3.0], [2.0, 0.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = spro_advantages(torch.tensor([1.0, 0.0]), rewards, mask, 2)
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    expected = torch.tensor([[g - 0.5, g + 0.5, g], [-g + 0.5, -g - 0.5, 0.0]])
    torch.testing.assert_close(adv, expected)
    half = spro_advantages(torch.tensor([1.0, 0.0]), rewards, mask, 2, outcome_coef=0.0, process_coef=2.0)
    torch.testing.assert_close(half, torch.tensor([[-1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]))
