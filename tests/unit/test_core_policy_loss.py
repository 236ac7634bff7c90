"""PPO clip (incl. dual clip), KL estimators and exact aggregation across a split batch."""
import math

import pytest
import torch

from prm_rl.core import (aggregate, approx_kl, kl_penalty, ppo_clip_loss, rows_with_gradient, sampler_correction,
                         sampler_ratio)

LN = math.log


def test_ppo_clip_both_signs_inside_and_outside_band():
    # ratios 1.1 (inside [0.8, 1.2]), 1.5 (above), 0.5 (below); last column is padding
    logp = torch.tensor([[LN(1.1), LN(1.5), LN(0.5), 50.0]] * 2, requires_grad=True)
    old = torch.zeros(2, 4)
    adv = torch.tensor([[1.0] * 4, [-2.0] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    loss, clipped = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2)
    expected = torch.tensor([
        # A=+1: -1.1 ; max(-1.5, -1.2) = -1.2 (clipped) ; max(-0.5, -0.8) = -0.5
        [-1.1, -1.2, -0.5, 0.0],
        # A=-2: 2.2 ; max(3.0, 2.4) = 3.0 ; max(1.0, 1.6) = 1.6 (clipped)
        [2.2, 3.0, 1.6, 0.0],
    ])
    torch.testing.assert_close(loss, expected)
    assert clipped.tolist() == [[False, True, False, False], [False, False, True, False]]
    # clipped tokens carry no gradient; unclipped ones d(-A r)/dlogp = -A r
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1, 0.0, -0.5, 0.0], [2.2, 3.0, 0.0, 0.0]]))


def test_clip_higher_widens_only_the_upper_bound():
    """DAPO: eps 0.2 below, 0.28 above. Ratio 1.5 with A = +1 is held at 1.28 (not 1.2); ratio 0.5 with A = -1
    still at 0.8; ratio 1.25 with A = +1 is inside the band and keeps its gradient."""
    logp = torch.tensor([[LN(1.5), LN(0.5), LN(1.25)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, clipped = ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_eps=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -1.25]]))
    assert clipped.tolist() == [[True, True, False]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -1.25]]))
    symmetric, _ = ppo_clip_loss(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), clip_eps=0.2)
    torch.testing.assert_close(symmetric, torch.tensor([[-1.2, 0.8, -1.2]]))


def test_sequence_level_ratio_is_gspos_length_normalised_ratio_on_every_token():
    """Row 0: token log-ratios 0.1 and 0.3 (a padded 5.0 ignored): every token's ratio is s = exp(0.2), and the
    gradient of token t is -A s (GSPO-token); summed with the seq-mean-token-mean aggregation it equals the
    gradient of GSPO's sequence objective -A exp(mean log-ratio). A band of 0.1 clips the whole row."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.3, 5.0], [-0.2, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    loss, clipped = ppo_clip_loss(logp, old, adv, mask, clip_eps=10.0, ratio_level="sequence")
    s = torch.tensor([math.exp(0.2), math.exp(-0.2)], dtype=torch.float64)
    torch.testing.assert_close(loss, torch.stack([-2.0 * s[0] * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64),
                                                  s[1] * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)]))
    assert not clipped.any()
    (grad,) = torch.autograd.grad(aggregate(loss, mask, "seq-mean-token-mean", 2), logp)
    sequence = torch.tensor([[0.1, 0.3, 5.0], [-0.2, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    seq_mean = (sequence * mask).sum(-1) / mask.sum(-1)
    (expected,) = torch.autograd.grad((-adv[:, 0] * torch.exp(seq_mean)).mean(), sequence)  # second implementation
    torch.testing.assert_close(grad, expected)
    tight, clipped = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.1, ratio_level="sequence")
    assert clipped.tolist() == [[True, True, False], [True, False, False]]  # exp(0.2) > 1.1, exp(-0.2) < 0.9
    torch.testing.assert_close(tight[0, :2], torch.tensor([-2.2, -2.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="ratio_level"):
        ppo_clip_loss(logp, old, adv, mask, ratio_level="segment")


def test_ppo_dual_clip():
    logp = torch.tensor([[LN(1.1), LN(5.0), LN(0.5)], [LN(1.1), LN(5.0), LN(0.5)]])
    old = torch.zeros(2, 3)
    adv = torch.tensor([[-1.0] * 3, [1.0] * 3])
    mask = torch.ones(2, 3)
    loss, clipped = ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    expected = torch.tensor([
        # A=-1: 1.1 (cap 3 not reached) ; max(5, 1.2) = 5 -> capped at 3 ; max(0.5, 0.8) = 0.8
        [1.1, 3.0, 0.8],
        # A=+1: dual clip does not apply: -1.1 ; max(-5, -1.2) = -1.2 ; -0.5
        [-1.1, -1.2, -0.5],
    ])
    torch.testing.assert_close(loss, expected)
    assert clipped.tolist() == [[False, True, True], [False, True, False]]
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, adv, mask, dual_clip=1.0)


def test_ppo_extreme_log_ratio_stays_finite():
    # exp(1000) would overflow; clamped to exp(20) so a zero advantage gives 0, not NaN
    loss, _ = ppo_clip_loss(torch.tensor([[1000.0]]), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1))
    assert loss.item() == 0.0


def test_kl_estimators():
    logp = torch.tensor([[-1.0, -1.0, -2.0, -1.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0 + LN(2), -2.0, -31.0, -100.0]])
    # k1 = logp - ref
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[1.0, -LN(2), 0.0, 30.0, 100.0]]))
    # k3 with d = ref - logp: d=-1 -> e^-1 + 1 - 1 = e^-1 ; d=ln2 -> 2 - ln2 - 1 ; d=0 -> 0 ;
    # d=-30 -> clamped to -20: e^-20 + 19 -> 10 after clamp ; d=-100 -> 10 as well
    torch.testing.assert_close(
        kl_penalty(logp, ref, "k3"), torch.tensor([[math.exp(-1), 1 - LN(2), 0.0, 10.0, 10.0]])
    )
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k2")


def test_approx_kl():
    # 0.5 * (-1 - (-3))^2 = 2 ; 0.5 * 0.5^2 = 0.125
    torch.testing.assert_close(approx_kl(torch.tensor([[-1.0, -1.0]]), torch.tensor([[-3.0, -1.5]])),
                               torch.tensor([[2.0, 0.125]]))


def test_aggregate_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 9.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    # row means 2, 4, and 0 for the empty row; 3 sequences -> (2 + 4 + 0) / 3
    assert aggregate(x, mask, "seq-mean-token-mean", 3).item() == pytest.approx(2.0)
    # 4 valid tokens: (1 + 2 + 3 + 4) / 4
    assert aggregate(x, mask, "token-mean", 4).item() == pytest.approx(2.5)
    # Dr. GRPO: token sums over (3 sequences x a budget of 4 tokens): (6 + 4) / 12, whatever the lengths
    assert aggregate(x, mask, "seq-mean-token-sum-norm", 3 * 4).item() == pytest.approx(10 / 12)
    with pytest.raises(ValueError):
        aggregate(x, mask, "seq-mean-token-sum", 3)
    with pytest.raises(ValueError):
        aggregate(x, mask, "token-mean", 0)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_split_batch_matches_whole(mode):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    values = w ** 2  # any differentiable per-token term
    denom = {"seq-mean-token-mean": 4, "token-mean": int(mask.sum()), "seq-mean-token-sum-norm": 4 * 5}[mode]
    whole = aggregate(values, mask, mode, denom)
    halves = [aggregate(values[i:i + 2], mask[i:i + 2], mode, denom) for i in (0, 2)]
    torch.testing.assert_close(halves[0] + halves[1], whole)
    # two "ranks" (uneven token counts: 6 and 5) each scale by R=2; DeepSpeed averages the gradients
    (g_whole,) = torch.autograd.grad(whole, w, retain_graph=True)
    g_ranks = [torch.autograd.grad(2 * h, w, retain_graph=True)[0] for h in halves]
    torch.testing.assert_close((g_ranks[0] + g_ranks[1]) / 2, g_whole)


def test_rows_with_gradient_are_those_with_a_nonzero_advantage_at_a_valid_token():
    adv = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0]])
    # row 2's only nonzero value sits on padding
    assert rows_with_gradient(adv, mask).tolist() == [False, True, False, True]


def test_a_row_with_zero_advantage_has_zero_gradient_whatever_its_ratio():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0], [-0.4, -2.0]])
    adv = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    mask = torch.ones(2, 2)
    loss, _ = ppo_clip_loss(logp, old, adv, mask, 0.2, 3.0)
    aggregate(loss, mask, "seq-mean-token-mean", 2.0).backward()
    assert torch.equal(logp.grad[0], torch.zeros(2)) and logp.grad[1].abs().sum() > 0


def test_sampler_ratio_is_pi_old_over_the_samplers_probability_and_stays_finite():
    old = torch.tensor([[LN(0.5), LN(0.2), -1000.0]])
    sampled = torch.tensor([[LN(0.25), LN(0.4), 0.0]])
    ratio = sampler_ratio(old, sampled)
    torch.testing.assert_close(ratio[0, :2], torch.tensor([2.0, 0.5]))
    assert ratio[0, 2] == pytest.approx(math.exp(-20.0))  # clamped, as PPO's own ratio


def test_sampler_corrections_weight_tokens_as_their_formulas_say():
    ratio = torch.tensor([[0.3, 0.6, 1.0, 1.9, 2.5, 8.0]], requires_grad=True)
    assert torch.equal(sampler_correction(ratio, "none", 2.0), torch.ones(1, 6))
    tis = sampler_correction(ratio, "tis", 2.0)  # min(r, cap): truncated above only
    torch.testing.assert_close(tis, torch.tensor([[0.3, 0.6, 1.0, 1.9, 2.0, 2.0]]))
    mask = sampler_correction(ratio, "mask", 2.0)  # 1 inside [1/cap, cap], else 0: both sides
    assert mask.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    assert not tis.requires_grad and not mask.requires_grad  # weights, not gradient paths
    with pytest.raises(ValueError, match="mode must be one of"):
        sampler_correction(ratio, "clip", 2.0)
