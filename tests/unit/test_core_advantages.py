"""RLOO (outcome and process), GRPO, REINFORCE++, returns and PRIME's combined advantages with hand-derived values."""
import pytest
import torch

from prm_rl import core
from prm_rl.core import (
    discounted_returns,
    grpo_advantages,
    grpo_outcome,
    place_on_last_token,
    prime_advantages,
    reinforce_pp_advantages,
    rloo_outcome,
    rloo_process,
)

NAN = float("nan")


def test_rloo_outcome_k2_and_k3():
    # K=2: the baseline is the other sample's score
    torch.testing.assert_close(rloo_outcome(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2),
                               torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # K=3, scores (1, 0, 0): 1 - mean(0, 0) = 1 ; 0 - mean(1, 0) = -0.5 (twice)
    torch.testing.assert_close(rloo_outcome(torch.tensor([1.0, 0.0, 0.0]), 3), torch.tensor([1.0, -0.5, -0.5]))
    # integer scores are accepted
    torch.testing.assert_close(rloo_outcome(torch.tensor([1, 0]), 2), torch.tensor([1.0, -1.0]))


def test_group_size_errors():
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_outcome(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_process(torch.zeros(2, 3), torch.ones(2, 3), 1)
    with pytest.raises(ValueError, match="group_size >= 2"):
        grpo_outcome(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="whole number of groups"):
        rloo_outcome(torch.tensor([1.0, 0.0, 1.0]), 2)


def test_rloo_process_k2():
    # row 0 rewards (1, 3) -> m0 = 2 ; row 1 reward (4) -> m1 = 4 ; K/(K-1) = 2, baseline (2+4)/1 = 6
    rewards = torch.tensor([[1.0, 3.0, NAN], [4.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = rloo_process(rewards, mask, 2)
    # row 0: 2*1-6 = -4, 2*3-6 = 0 ; row 1: 2*4-6 = 2  (row means -2, 2 = m_i - m_other)
    torch.testing.assert_close(out, torch.tensor([[-4.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))


def test_rloo_process_k3():
    # m = (3, 0, 2) -> baseline (3+0+2)/2 = 2.5 ; K/(K-1) = 1.5
    rewards = torch.tensor([[3.0, 3.0, 0.0], [0.0, 0.0, 0.0], [6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    out = rloo_process(rewards, mask, 3)
    expected = torch.tensor([
        [2.0, 2.0, 0.0],     # 1.5*3 - 2.5
        [-2.5, 0.0, 0.0],    # 1.5*0 - 2.5
        [6.5, -2.5, -2.5],   # 1.5*6 - 2.5 ; 1.5*0 - 2.5
    ])
    torch.testing.assert_close(out, expected)


def test_grpo_outcome():
    # K=3 (1, 0, 0): mean 1/3, unbiased var (4/9 + 1/9 + 1/9)/2 = 1/3, std 0.577350
    out = grpo_outcome(torch.tensor([1.0, 0.0, 0.0]), 3)
    torch.testing.assert_close(out, torch.tensor([1.154701, -0.577350, -0.577350]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grpo_outcome(torch.tensor([1.0, 0.0, 0.0]), 3, scale_by_std=False),
                               torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    # K=2 (1, 0): std sqrt(0.5) -> +-0.5/0.707107 ; equal group (1, 1): 0 / (0 + eps) = 0
    out = grpo_outcome(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    torch.testing.assert_close(out, torch.tensor([0.707107, -0.707107, 0.0, 0.0]), rtol=1e-5, atol=1e-5)


def test_place_on_last_token():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    out = place_on_last_token(torch.tensor([2.0, 3.0, -1.0]), mask)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))


def test_discounted_returns_gamma_1_and_half():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # gamma 1: suffix sums 1+2+3, 2+3, 3 ; 4+5, 5
    torch.testing.assert_close(discounted_returns(rewards, mask, 1.0),
                               torch.tensor([[6.0, 5.0, 3.0, 0.0], [9.0, 5.0, 0.0, 0.0]]))
    # gamma 0.5: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75 ; G1 = 5, G0 = 4 + 2.5 = 6.5
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.5),
                               torch.tensor([[2.75, 3.5, 3.0, 0.0], [6.5, 5.0, 0.0, 0.0]]))


MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_prime_advantages_outcome_only():
    scores = torch.tensor([1.0, 0.0])
    # RLOO (1, -1) on the last token; gamma 1 spreads it over every earlier token
    adv, ret = prime_advantages(scores, None, MASK, 2, whiten=False)
    expected = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    torch.testing.assert_close(ret, expected)
    torch.testing.assert_close(adv, expected)
    # outcome_gamma 0.5: the first token of row 0 sees 0.5 * 1
    _, ret = prime_advantages(scores, None, MASK, 2, outcome_gamma=0.5, whiten=False)
    torch.testing.assert_close(ret, torch.tensor([[0.5, 1.0, 0.0], [-1.0, 0.0, 0.0]]))
    # whitened: values {1, 1, -1}, mean 1/3, unbiased var (4/9+4/9+16/9)/2 = 4/3, std 1.154701
    adv, _ = prime_advantages(scores, None, MASK, 2)
    torch.testing.assert_close(adv, torch.tensor([[0.577350, 0.577350, 0.0], [-1.154701, 0.0, 0.0]]),
                               rtol=1e-5, atol=1e-5)


def test_prime_advantages_both_sources_with_coefficients():
    scores = torch.tensor([1.0, 0.0])
    process = torch.tensor([[1.0, 3.0, NAN], [4.0, 7.0, 7.0]])
    # outcome RLOO on last token: [[0, 1, 0], [-1, 0, 0]] ; process RLOO (see test_rloo_process_k2):
    # [[-4, 0, 0], [2, 0, 0]] ; with outcome_coef 2, process_coef 0.5:
    # row 0: (0 - 2, 2 + 0) = (-2, 2) ; row 1: -2 + 1 = -1 ; returns (gamma 1): (0, 2) ; (-1)
    adv, ret = prime_advantages(scores, process, MASK, 2, outcome_coef=2.0, process_coef=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
    # whitened over {0, 2, -1}: mean 1/3, unbiased var (1/9 + 25/9 + 16/9)/2 = 7/3, std 1.527525
    torch.testing.assert_close(adv, torch.tensor([[-0.218218, 1.091089, 0.0], [-0.872872, 0.0, 0.0]]),
                               rtol=1e-5, atol=1e-5)


def test_process_and_outcome_returns_have_their_own_discounts():
    """Row 0 (two tokens): outcome RLOO (0, 2) x coef 2 -> returns with outcome_gamma 1: (2, 2); process RLOO
    (-4, 0) x coef 0.5 = (-2, 0) -> returns with process_gamma 0.5: (-2 + 0.5 * 0, 0) = (-2, 0). Sum (0, 2).
    With process_gamma 1 and outcome_gamma 0.5 instead: outcome (1, 2), process (-2, 0): (-1, 2)."""
    scores = torch.tensor([1.0, 0.0])
    process = torch.tensor([[1.0, 3.0, NAN], [4.0, 7.0, 7.0]])
    knobs = dict(outcome_coef=2.0, process_coef=0.5, whiten=False)
    _, ret = prime_advantages(scores, process, MASK, 2, process_gamma=0.5, **knobs)
    torch.testing.assert_close(ret[0, :2], torch.tensor([0.0, 2.0]))
    _, ret = prime_advantages(scores, process, MASK, 2, outcome_gamma=0.5, **knobs)
    torch.testing.assert_close(ret[0, :2], torch.tensor([-1.0, 2.0]))
    one = prime_advantages(scores, process, MASK, 2, process_gamma=0.7, outcome_gamma=0.7, **knobs)[1]
    total = discounted_returns(2.0 * place_on_last_token(rloo_outcome(scores, 2), MASK)
                               + 0.5 * rloo_process(process, MASK, 2), MASK, 0.7)
    torch.testing.assert_close(one, total)  # one gamma for both: the returns of the summed rewards


def test_grpo_advantages_broadcast():
    out = grpo_advantages(torch.tensor([1.0, 0.0]), MASK, 2)
    torch.testing.assert_close(out, torch.tensor([[0.707107, 0.707107, 0.0], [-0.707107, 0.0, 0.0]]),
                               rtol=1e-5, atol=1e-5)


def test_dr_grpo_centres_on_the_group_mean_without_dividing_by_its_std():
    """Groups [1, 0, 0, 1] and [1, 0, 0, 0]: o - mean is +-0.5 and (0.75, -0.25, ...); GRPO divides the first by
    std 0.577 and the second by 0.5, so a group that is nearly all wrong weighs as much as a split one."""
    mask = torch.ones(8, 2)
    dr = grpo_advantages(torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0]), mask, 4, scale_by_std=False)
    torch.testing.assert_close(dr[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5, 0.75, -0.25, -0.25, -0.25]))
    grpo = grpo_advantages(torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0]), mask, 4)
    torch.testing.assert_close(grpo[:, 1], torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 1.5, -0.5,
                                                         -0.5, -0.5]), rtol=1e-5, atol=1e-5)


# Two responses of one prompt: row 0 of 3 tokens, scored 1; row 1 of 2, scored 0; their per-token KL rewards.
PP_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
PP_KL = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.1, 9.0]])  # 9.0 sits on padding: never read


def test_reinforce_pp_returns_of_the_outcome_and_the_kl_reward_without_a_baseline():
    """R = o on the last token + kl: row 0 (-0.1, -0.2, 0.7) -> returns (0.4, 0.5, 0.7); row 1 (-0.4, 0.1) ->
    (-0.3, 0.1). With gamma 0.5: row 0 (-0.025, 0.15, 0.7), row 1 (-0.35, 0.1)."""
    scores = torch.tensor([1.0, 0.0])
    raw = reinforce_pp_advantages(scores, PP_KL, PP_MASK, 2, whiten=False)
    torch.testing.assert_close(raw, torch.tensor([[0.4, 0.5, 0.7], [-0.3, 0.1, 0.0]]))
    discounted = reinforce_pp_advantages(scores, PP_KL, PP_MASK, 2, gamma=0.5, whiten=False)
    torch.testing.assert_close(discounted, torch.tensor([[-0.025, 0.15, 0.7], [-0.35, 0.1, 0.0]]))
    # whitened over the 5 valid tokens: mean 0.28, unbiased variance 0.608 / 4 = 0.152
    whitened = reinforce_pp_advantages(scores, PP_KL, PP_MASK, 2)
    std = 0.152 ** 0.5
    expected = torch.tensor([[0.12, 0.22, 0.42], [-0.58, -0.18, 0.28]]) / std * PP_MASK
    torch.testing.assert_close(whitened, expected, rtol=1e-5, atol=1e-6)
    # no KL reward: the outcome alone on every token (gamma 1), still no baseline
    torch.testing.assert_close(reinforce_pp_advantages(scores, None, PP_MASK, 2, whiten=False),
                               torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_reinforce_pp_baseline_subtracts_the_group_mean_outcome_before_the_kl_rewards_join():
    """Group mean 0.5: outcomes (0.5, -0.5); row 0 (-0.1, -0.2, 0.2) -> (-0.1, 0.0, 0.2); row 1 (-0.4, -0.4) ->
    (-0.8, -0.4). The KL rewards are not centred."""
    out = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), PP_KL, PP_MASK, 2, baseline=True, whiten=False)
    torch.testing.assert_close(out, torch.tensor([[-0.1, 0.0, 0.2], [-0.8, -0.4, 0.0]]))
    with pytest.raises(ValueError, match="group_size >= 2"):
        reinforce_pp_advantages(torch.tensor([1.0]), None, PP_MASK[:1], 1, baseline=True)


def _openrlhf_reinforce(scores, kl_rewards, action_mask, k, gamma, baseline):
    """A second implementation: REINFORCE++ as the authors' OpenRLHF computes it (experience_maker.py's reward
    shaping, compute_reward and get_cumulative_returns; its advantage normalisation with the biased variance),
    written here step by step over python lists."""
    n, width = action_mask.shape
    r = scores.tolist()
    if baseline:
        for g in range(0, n, k):
            mean = sum(r[g:g + k]) / k
            r[g:g + k] = [x - mean for x in r[g:g + k]]
    returns = torch.zeros(n, width)
    for i in range(n):
        last = max(t for t in range(width) if action_mask[i, t])
        running = 0.0
        for t in reversed(range(width)):
            reward = (float(kl_rewards[i, t]) + (r[i] if t == last else 0.0)) * float(action_mask[i, t])
            running = reward + gamma * running
            returns[i, t] = running
    valid = [float(returns[i, t]) for i in range(n) for t in range(width) if action_mask[i, t]]
    mean = sum(valid) / len(valid)
    var = sum((x - mean) ** 2 for x in valid) / len(valid)
    return returns, (returns - mean) / var ** 0.5 * action_mask


@pytest.mark.parametrize("baseline", [False, True])
def test_reinforce_pp_matches_the_authors_openrlhf_computation(baseline):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(8, 6, generator=g) > 0.3).float()
    mask[:, 0] = 1
    mask = mask.cummin(dim=1).values  # right padding
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 1.0, 1.0])
    kl = -0.05 * torch.rand(8, 6, generator=g)
    returns, normalised = _openrlhf_reinforce(scores, kl, mask, 4, 0.9, baseline)
    ours = reinforce_pp_advantages(scores, kl, mask, 4, baseline=baseline, gamma=0.9, whiten=False)
    torch.testing.assert_close(ours, returns * mask)
    n = float(mask.sum())  # OpenRLHF divides by the biased std, prm_rl by the unbiased one
    whitened = reinforce_pp_advantages(scores, kl, mask, 4, baseline=baseline, gamma=0.9)
    torch.testing.assert_close(whitened * (n / (n - 1)) ** 0.5, normalised, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- the registry
def test_registered_estimators_are_the_documented_functions():
    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    mask = (torch.rand(8, 5, generator=g) > 0.2).float()
    mask[:, 0] = 1
    rewards = torch.randn(8, 5, generator=g) * mask
    tree = torch.randn(8, 5, generator=g) * mask
    knobs = dict(outcome_coef=1.0, process_coef=0.5, process_gamma=0.9, outcome_gamma=0.8, whiten=True)
    run = {name: est.fn(scores, rewards if est.uses_prm or est.self_guided or est.checked_steps or est.token_kl
                        else None, mask, 4, tree_credit=tree if est.uses_tree else None, **knobs)
           for name, est in core.ADVANTAGE_ESTIMATORS.items()}
    assert set(run) == {"prime", "rloo", "grpo", "dr-grpo", "spro", "tree", "prime-tree", "oracle-steps", "oracle-from-error",
                        "oracle-error-step", "reinforce++", "reinforce++-baseline"}
    assert [n for n, e in core.ADVANTAGE_ESTIMATORS.items() if e.token_kl] == ["reinforce++", "reinforce++-baseline"]
    for name, baseline in (("reinforce++", False), ("reinforce++-baseline", True)):
        torch.testing.assert_close(run[name], reinforce_pp_advantages(scores, rewards, mask, 4, baseline=baseline,
                                                                      outcome_coef=1.0, gamma=0.8))
    assert [n for n, e in core.ADVANTAGE_ESTIMATORS.items() if e.checked_steps] == [
        "oracle-steps", "oracle-from-error", "oracle-error-step"]
    torch.testing.assert_close(run["oracle-steps"], run["prime"])  # PRIME's math on the checker's rewards
    no_error_marked = rewards.clamp(min=0)  # localisation reads the -1: without one, plain RLOO
    for name in ("oracle-from-error", "oracle-error-step"):
        localised = core.ADVANTAGE_ESTIMATORS[name].fn(scores, no_error_marked, mask, 4, tree_credit=None, **knobs)
        torch.testing.assert_close(localised, core.prime_advantages(scores, None, mask, 4, **knobs)[0] * mask)
    assert [n for n, e in core.ADVANTAGE_ESTIMATORS.items() if e.uses_prm] == ["prime", "prime-tree"]
    assert [n for n, e in core.ADVANTAGE_ESTIMATORS.items() if e.self_guided] == ["spro"]
    assert [n for n, e in core.ADVANTAGE_ESTIMATORS.items() if e.uses_tree] == ["tree", "prime-tree"]
    torch.testing.assert_close(run["tree"], core.tree_advantages(scores, tree, mask, 4, outcome_coef=1.0,
                                                                 outcome_gamma=0.8))
    unwhitened = core.prime_advantages(scores, rewards, mask, 4, **knobs)[1] + tree
    torch.testing.assert_close(run["prime-tree"], core.masked_whiten(unwhitened, mask))
    torch.testing.assert_close(run["spro"], core.spro_advantages(scores, rewards, mask, 4, outcome_coef=1.0,
                                                                 process_coef=0.5))
    torch.testing.assert_close(run["prime"], core.prime_advantages(scores, rewards, mask, 4, **knobs)[0])
    torch.testing.assert_close(run["rloo"], core.prime_advantages(scores, None, mask, 4, **knobs)[0])
    torch.testing.assert_close(run["grpo"], core.grpo_advantages(scores, mask, 4))
    torch.testing.assert_close(run["dr-grpo"], core.grpo_advantages(scores, mask, 4, scale_by_std=False))


def test_a_registered_estimator_becomes_a_config_choice(monkeypatch):
    from prm_rl.config import AlgorithmSection, ConfigError

    monkeypatch.setattr(core.advantages, "ADVANTAGE_ESTIMATORS", dict(core.ADVANTAGE_ESTIMATORS))
    monkeypatch.setattr(core, "ADVANTAGE_ESTIMATORS", core.advantages.ADVANTAGE_ESTIMATORS)
    section = AlgorithmSection(advantage="outcome_sign", whiten=False)
    with pytest.raises(ConfigError, match="algorithm.advantage='outcome_sign': must be one of prime, rloo, grpo, dr-grpo, spro"):
        section.check()

    @core.register_advantage("outcome_sign", uses_prm=False)
    def outcome_sign(scores, process_rewards, mask, group_size, **_):
        return (2 * scores - 1)[:, None] * mask

    section.check()
    assert not section.uses_prm
    with pytest.raises(ValueError, match="already registered"):
        core.register_advantage("outcome_sign", uses_prm=False)(outcome_sign)


def test_registered_prm_losses_sum_and_count_like_the_functions():
    seq = torch.tensor([0.3, -0.2, 1.0, 0.1, -1.0, 0.4, 0.0, 0.2])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5])
    ce, dpo = core.PRM_LOSSES["ce"], core.PRM_LOSSES["dpo"]
    # one token per response, beta 0.5: the sequence reward is 0.5 * log_ratio
    inputs = core.PrmLossInputs(log_ratio=(seq / 0.5)[:, None], mask=torch.ones(8, 1), labels=labels, group_size=4,
                                beta=0.5)
    torch.testing.assert_close(ce.summed(inputs), core.prm_ce_loss(seq, labels).sum())
    assert ce.terms(labels, 4) == 8
    chosen, rejected = core.dpo_pairs(labels, 4)
    torch.testing.assert_close(dpo.summed(inputs), core.prm_dpo_loss(seq, chosen, rejected).sum())
    assert dpo.terms(labels, 4) == 4 + 5  # group 1: 2 correct x 2 wrong; group 2 (0, 0, 1, .5): 1 > .5 and both > 0 x2


def test_advantage_parts_split_primes_unwhitened_value_into_outcome_and_process():
    from prm_rl.config import AlgorithmSection, RewardSection
    from prm_rl.trainer.stages import advantage_parts

    g = torch.Generator().manual_seed(0)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    rewards = torch.randn(4, 4, generator=g) * mask
    a, r = AlgorithmSection(advantage="prime", process_gamma=0.9), RewardSection()
    parts = advantage_parts(scores, rewards, mask, 2, a, r)
    _, returns = prime_advantages(scores, rewards, mask, 2, process_gamma=0.9, outcome_coef=r.outcome_coef,
                                  process_coef=r.process_coef)
    outcome = prime_advantages(scores, None, mask, 2, outcome_coef=r.outcome_coef)[1]
    process = returns - outcome
    valid = mask.bool()
    assert parts["adv/outcome_std"] == pytest.approx(float(outcome[valid].double().std()))
    assert parts["adv/process_std"] == pytest.approx(float(process[valid].double().std()))
    expected = torch.corrcoef(torch.stack([process[valid].double(), outcome[valid].double()]))[0, 1]
    assert parts["adv/process_outcome_corr"] == pytest.approx(float(expected))


def test_advantage_parts_split_prime_tree_into_outcome_process_and_tree():
    from prm_rl.config import AlgorithmSection, RewardSection
    from prm_rl.trainer.stages import advantage_parts

    g = torch.Generator().manual_seed(1)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    rewards = torch.randn(4, 4, generator=g) * mask
    tree = torch.randn(4, 4, generator=g) * mask
    a, r = AlgorithmSection(advantage="prime-tree"), RewardSection()
    parts = advantage_parts(scores, rewards, mask, 2, a, r, tree)
    returns = prime_advantages(scores, rewards, mask, 2)[1]
    outcome = prime_advantages(scores, None, mask, 2)[1]
    valid = mask.bool()
    assert parts["adv/process_std"] == pytest.approx(float((returns - outcome)[valid].double().std()))
    assert parts["adv/tree_std"] == pytest.approx(float(tree[valid].double().std()))
    expected = torch.corrcoef(torch.stack([tree[valid].double(), outcome[valid].double()]))[0, 1]
    assert parts["adv/tree_outcome_corr"] == pytest.approx(float(expected))
    # tree alone: no process part is reported
    only_tree = advantage_parts(scores, None, mask, 2, AlgorithmSection(advantage="tree"), r, tree)
    assert "adv/process_std" not in only_tree and only_tree["adv/tree_std"] == parts["adv/tree_std"]
