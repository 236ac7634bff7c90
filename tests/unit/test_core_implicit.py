"""Implicit PRM math: log-ratios, losses, pairs, ranking accuracy, process rewards, normalisation."""
import math

import pytest
import torch

from prm_rl import core

from prm_rl.core import (
    dpo_pairs,
    implicit_log_ratio,
    normalize_by_max_return,
    pairwise_ranking_accuracy,
    prm_ce_loss,
    prm_dpo_loss,
    process_rewards,
    sequence_reward,
)

LN2, LN3 = math.log(2), math.log(3)


def test_implicit_log_ratio_and_sequence_reward():
    prm = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, float("nan")]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-2.5, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    q = implicit_log_ratio(prm, ref, mask)
    # -1 - (-1.5) = 0.5, -2 - (-1) = -1 ; -0.5 - (-2.5) = 2, -4 - (-1) = -3 ; padding 0 even over NaN
    torch.testing.assert_close(q, torch.tensor([[0.5, -1.0, 0.0], [2.0, -3.0, 0.0]]))
    # beta * row sum: 0.5 * (0.5 - 1) = -0.25 ; 0.5 * (2 - 3) = -0.5
    r = sequence_reward(q, mask, beta=0.5)
    torch.testing.assert_close(r, torch.tensor([-0.25, -0.5]))
    r.sum().backward()
    torch.testing.assert_close(prm.grad, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]))


def test_prm_ce_loss_hard_soft_and_extreme():
    # r = ln 3 -> sigmoid 0.75 ; r = 0 -> sigmoid 0.5
    r = torch.tensor([LN3, LN3, LN3, 0.0, 100.0])
    y = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    expected = torch.tensor([
        -math.log(0.75),                               # 0.287682
        -math.log(0.25),                               # 1.386294
        0.5 * (-math.log(0.75)) + 0.5 * (-math.log(0.25)),  # soft label: 0.836988
        LN2,                                           # -ln 0.5
        100.0,                                         # -ln(1 - sigmoid(100)) ~= 100, stays finite
    ])
    torch.testing.assert_close(prm_ce_loss(r, y), expected)


def test_dpo_pairs_and_loss():
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 0.0])
    chosen, rejected = dpo_pairs(labels, group_size=3)
    # group 0: 0>1, 2>1 ; group 1: all equal, no pair ; group 2 (rows 6..8 = 0.5, 1, 0): 6>8, 7>6, 7>8
    assert chosen.tolist() == [0, 2, 6, 7, 7]
    assert rejected.tolist() == [1, 1, 8, 6, 8]
    r = torch.tensor([LN3, 0.0, 0.0, 0, 0, 0, 0.0, 0.0, LN3])
    loss = prm_dpo_loss(r, chosen, rejected)
    # differences: ln3 -> -ln(3/4) ; 0 -> ln 2 ; -ln3 -> -ln(1/4) ; 0 -> ln 2 ; -ln3 -> ln 4
    torch.testing.assert_close(
        loss, torch.tensor([-math.log(0.75), LN2, math.log(4), LN2, math.log(4)])
    )


def test_pairwise_ranking_accuracy_weighting():
    # group A labels (1, 0, 0.5), rewards (2, 1, 3):
    #   (0,1) gap 1, rdiff +1 right ; (0,2) gap 0.5, rdiff -1 wrong ; (1,2) gap 0.5, rdiff -2 right
    #   -> correct 1.5 of weight 2
    # group B all labels equal -> weight 0 (veRL would count 0.5 for it)
    # group C labels (1, 0, 0), rewards (0, 0, -1): (0,1) reward tie -> wrong, weight 1 ;
    #   (0,2) right, weight 1 ; (1,2) equal labels -> weight 0  -> correct 1 of weight 2
    r = torch.tensor([2.0, 1.0, 3.0, 5.0, -1.0, 0.0, 0.0, 0.0, -1.0])
    y = torch.tensor([1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    correct, weight = pairwise_ranking_accuracy(r, y, group_size=3)
    assert correct.item() == pytest.approx(2.5)
    assert weight.item() == pytest.approx(4.0)
    # with tie_credit=0.5 (held-out evaluation) group C's tie counts half: 3 of 4
    correct, _ = pairwise_ranking_accuracy(r, y, group_size=3, tie_credit=0.5)
    assert correct.item() == pytest.approx(3.0)
    # a batch of only equal-label groups gives (0, 0); the caller decides what an empty ratio means
    c, w = pairwise_ranking_accuracy(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), 2)
    assert (c.item(), w.item()) == (0.0, 0.0)


# row 0: 4 valid tokens ; row 1: 2 valid tokens, padding holds junk (7, 8)
LOG_RATIO = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
# row 0 steps close at t=1 (and at the last token t=3) ; row 1 marks t=0 ; its marks at t=2, 3 are padding
STEP_END = torch.tensor([[False, True, False, False], [True, False, True, True]])


def _pr(granularity, scale_by_beta, reward_eos, step_end=None):
    return process_rewards(LOG_RATIO, MASK, 0.5, scale_by_beta=scale_by_beta, granularity=granularity,
                           step_end=step_end, reward_eos=reward_eos)


@pytest.mark.parametrize("scale_by_beta, reward_eos, expected", [
    (True, True, [[0.5, 1.0, 1.5, 2.0], [2.5, 3.0, 0, 0]]),    # beta * q, EOS kept
    (False, True, [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0, 0]]),   # q (authors' code)
    (True, False, [[0.5, 1.0, 1.5, 0.0], [2.5, 0.0, 0, 0]]),   # last valid token zeroed (veRL port)
    (False, False, [[1.0, 2.0, 3.0, 0.0], [5.0, 0.0, 0, 0]]),
])
def test_process_rewards_token(scale_by_beta, reward_eos, expected):
    torch.testing.assert_close(_pr("token", scale_by_beta, reward_eos), torch.tensor(expected))


@pytest.mark.parametrize("scale_by_beta, reward_eos, expected", [
    (False, True, [[0, 0, 0, 10.0], [0, 11.0, 0, 0]]),   # 1+2+3+4 ; 5+6
    (False, False, [[0, 0, 0, 6.0], [0, 5.0, 0, 0]]),    # last token zeroed before summing: 1+2+3 ; 5
    (True, True, [[0, 0, 0, 5.0], [0, 5.5, 0, 0]]),      # 0.5 * 10 ; 0.5 * 11
    (True, False, [[0, 0, 0, 3.0], [0, 2.5, 0, 0]]),     # 0.5 * 6 ; 0.5 * 5
])
def test_process_rewards_whole(scale_by_beta, reward_eos, expected):
    torch.testing.assert_close(_pr("whole", scale_by_beta, reward_eos), torch.tensor(expected))


@pytest.mark.parametrize("scale_by_beta, reward_eos, expected", [
    # row 0 spans {0,1} -> 1+2 at t=1, {2,3} -> 3+4 at t=3 ; row 1 spans {0} -> 5, {1} -> 6
    (False, True, [[0, 3.0, 0, 7.0], [5.0, 6.0, 0, 0]]),
    # EOS zeroed first: row 0 last span is 3+0 ; row 1 last span is 0
    (False, False, [[0, 3.0, 0, 3.0], [5.0, 0.0, 0, 0]]),
    (True, True, [[0, 1.5, 0, 3.5], [2.5, 3.0, 0, 0]]),
    (True, False, [[0, 1.5, 0, 1.5], [2.5, 0.0, 0, 0]]),
])
def test_process_rewards_step(scale_by_beta, reward_eos, expected):
    torch.testing.assert_close(_pr("step", scale_by_beta, reward_eos, STEP_END), torch.tensor(expected))
    # marking the last token as a step end as well changes nothing
    marked = STEP_END.clone()
    marked[0, 3] = True
    torch.testing.assert_close(_pr("step", scale_by_beta, reward_eos, marked), torch.tensor(expected))


def test_process_rewards_step_single_span_equals_whole():
    no_marks = torch.zeros_like(STEP_END)
    torch.testing.assert_close(_pr("step", False, True, no_marks), _pr("whole", False, True))


def test_process_rewards_bad_arguments():
    with pytest.raises(ValueError, match="step_end"):
        _pr("step", True, True, None)
    with pytest.raises(ValueError, match="granularity"):
        _pr("sentence", True, True)


def test_normalize_by_max_return():
    rewards = torch.tensor([[1.0, -2.0, 3.0, 0.0], [-4.0, 1.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # reverse cumulative sums: row 0 (2, 1, 3, 0), row 1 (-3, 1) -> largest magnitude 3
    expected = torch.tensor([[1 / 3, -2 / 3, 1.0, 0.0], [-4 / 3, 1 / 3, 0.0, 0.0]])
    torch.testing.assert_close(normalize_by_max_return(rewards, mask), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normalize_by_max_return(rewards, mask, eps=0.0), expected)
    zeros = torch.zeros(2, 3)
    torch.testing.assert_close(normalize_by_max_return(zeros, torch.ones(2, 3)), zeros)


def test_prefix_values_are_the_beta_scaled_running_mean_log_ratio():
    log_ratio = torch.tensor([[2.0, 0.0, 4.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    v = core.prefix_implicit_values(log_ratio, mask, beta=0.5)
    assert v.tolist() == [[1.0, 0.5, 1.0, 0.0]]


def test_prefix_loss_is_the_mean_bce_over_judged_prefixes_with_the_margin():
    log_ratio = torch.tensor([[2.0, 0.0, 4.0], [1.0, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ends = torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.bool)
    targets = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.0, 0.0]])
    got = core.prm_prefix_loss(log_ratio, mask, ends, targets, beta=1.0, margin=0.25)
    # row 0 judges v = 1 (t=1) and 2 (t=2), target 1; row 1 judges v = 1 (t=0, target 0.5) and -1 (t=1, target 0)
    def bce(v, y, m=0.25):
        return -(y * math.log(1 / (1 + math.exp(-(v - m)))) + (1 - y) * math.log(1 / (1 + math.exp(v + m))))
    want = [(bce(1, 1) + bce(2, 1)) / 2, (bce(1, 0.5) + bce(-1, 0)) / 2]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # the registered loss reads the row's outcome when no per-prefix target is given
    inputs = core.PrmLossInputs(log_ratio, mask, torch.tensor([1.0, 0.0]), 2, 1.0, prefix_ends=ends, margin=0.25)
    outcome_targets = torch.tensor([[1.0] * 3, [0.0] * 3])
    torch.testing.assert_close(core.PRM_LOSSES["prefix"].summed(inputs),
                               core.prm_prefix_loss(log_ratio, mask, ends, outcome_targets, 1.0, 0.25).sum())


def test_prefix_loss_gradient_reaches_every_judged_prefix_unlike_the_sequence_loss():
    # the sequence CE sees only the sum: moving log-ratio mass between tokens leaves it unchanged; the prefix loss
    # does not (the per-token credit is identified)
    mask, ends = torch.ones(1, 4), torch.tensor([[0, 1, 0, 1]], dtype=torch.bool)
    a = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    ce = [core.prm_ce_loss(core.sequence_reward(x, mask, 1.0), torch.tensor([1.0])) for x in (a, b)]
    prefix = [core.prm_prefix_loss(x, mask, ends, torch.ones(1, 4), 1.0) for x in (a, b)]
    assert torch.equal(ce[0], ce[1]) and not torch.equal(prefix[0], prefix[1])
