"""The outcome score's shaping (DAPO's overlong penalty, the KL penalty in the reward) and the [0, 1] labels the PRM
and the filter read off scores outside [0, 1], with hand-derived values; how the stages hand them to the
estimators; their config rules."""
import pytest
import torch

from prm_rl import core
from prm_rl.config import AlgorithmSection, ConfigError, FilterSection, RewardSection, to_config
from prm_rl.rollout.generate import Rollout
from prm_rl.trainer import stages


def test_outcome_labels_by_each_rule():
    scores = torch.tensor([-1.5, 0.0, 0.25, 2.0])
    torch.testing.assert_close(core.outcome_labels(scores, "threshold", 0.0), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(core.outcome_labels(scores, "threshold", 0.25), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    # sigmoid(s - 0.25): sigmoid(-1.75) = 0.148047, sigmoid(-0.25) = 0.437823, 0.5, sigmoid(1.75) = 0.851953
    torch.testing.assert_close(core.outcome_labels(scores, "sigmoid", 0.25),
                               torch.tensor([0.148047, 0.437823, 0.5, 0.851953]), rtol=1e-5, atol=1e-6)
    unit = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(core.outcome_labels(unit), unit)  # the default: scores in [0, 1] are the labels
    with pytest.raises(ValueError, match=r"outside \[0, 1\] \(min -1\.5, max 2\).*reward\.outcome_labels"):
        core.outcome_labels(scores)


def test_overlong_penalty_falls_linearly_to_minus_the_factor_at_the_cap():
    """L_max 10, L_cache 4: no penalty up to 6 tokens, then -1/4 per token to -1 at 10 (factor 1); factor 0.5 halves
    it."""
    lengths = torch.tensor([1, 6, 7, 8, 9, 10])
    torch.testing.assert_close(core.overlong_penalty(lengths, 10, 4), torch.tensor([0, 0, -0.25, -0.5, -0.75, -1.0]))
    torch.testing.assert_close(core.overlong_penalty(lengths, 10, 4, 0.5),
                               torch.tensor([0, 0, -0.125, -0.25, -0.375, -0.5]))
    with pytest.raises(ValueError, match="buffer must be > 0"):
        core.overlong_penalty(lengths, 10, 0)


def _dapo_overlong_reward(length: int, max_resp_len: int, buffer_len: int, factor: float) -> float:
    """A second implementation: the DAPO authors' reward manager in veRL (recipe/dapo), per response."""
    expected_len = max_resp_len - buffer_len
    exceed_len = length - expected_len
    return min(-exceed_len / buffer_len * factor, 0.0)


def test_overlong_penalty_matches_the_dapo_authors_reward_manager():
    lengths = torch.arange(1, 65)
    ours = core.overlong_penalty(lengths, 64, 16, 0.7)
    theirs = torch.tensor([_dapo_overlong_reward(n, 64, 16, 0.7) for n in range(1, 65)])
    torch.testing.assert_close(ours, theirs)


def test_kl_rewards_are_minus_coef_times_the_estimate_on_valid_tokens():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.6, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # k1 = old - ref: (0.5, -1, 0), (0, 0.5, pad)
    torch.testing.assert_close(core.kl_rewards(old, ref, mask, 0.1), torch.tensor([[-0.05, 0.1, 0.0],
                                                                                  [0.0, -0.05, 0.0]]))
    # k3 with d = ref - old: exp(d) - d - 1; d = -0.5 -> 0.106531, d = 1 -> 0.718282
    k3 = core.kl_rewards(old, ref, mask, 1.0, "k3")
    torch.testing.assert_close(k3[0], torch.tensor([-0.106531, -0.718282, 0.0]), rtol=1e-5, atol=1e-6)


def _rollout(mask: torch.Tensor) -> Rollout:
    n, t = mask.shape
    ids = torch.ones(n, t, dtype=torch.long)
    return Rollout(ids[:, :1], torch.ones(n, 1, dtype=torch.long), ids * mask, mask, mask.sum(dim=1) == t)


MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
OLD = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])
REF = OLD - 0.5  # k1 = 0.5 on every token


def test_outcome_shaping_adds_the_overlong_penalty_and_hands_over_the_kl_rewards():
    """max_new_tokens 4, buffer 2: lengths 4, 2, 3, 1 -> penalties -1, 0, -0.5, 0; KL reward -0.1 x 0.5 per token,
    summed over each response: -0.2, -0.1, -0.15, -0.05."""
    r = RewardSection(overlong_buffer=2, kl_coef=0.1)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    outcome, kl, metrics = stages.outcome_shaping_stage(scores, _rollout(MASK), OLD, REF, r, max_new_tokens=4)
    torch.testing.assert_close(outcome, torch.tensor([0.0, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(kl, -0.05 * MASK.float())
    assert metrics["reward/overlong_penalty_mean"] == pytest.approx(-0.375)
    assert metrics["reward/kl_penalty_mean"] == pytest.approx(-0.125)
    same, none, quiet = stages.outcome_shaping_stage(scores, _rollout(MASK), None, None, RewardSection(), 4)
    assert same is scores and none is None and quiet == {}


def test_sequence_estimators_read_the_summed_kl_reward_and_reinforce_pp_reads_it_per_token():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    kl = -0.05 * MASK.float()
    r = RewardSection()
    rloo = stages.advantage_stage(scores, None, MASK, 2, AlgorithmSection(advantage="rloo"), r, kl_rewards=kl)
    shaped = scores + torch.tensor([-0.2, -0.1, -0.15, -0.05])
    torch.testing.assert_close(rloo, core.prime_advantages(shaped, None, MASK, 2)[0])
    pp = stages.advantage_stage(scores, None, MASK, 2, AlgorithmSection(advantage="reinforce++"), r, kl_rewards=kl)
    torch.testing.assert_close(pp, core.reinforce_pp_advantages(scores, kl, MASK, 2))
    # PRIME: the KL sum joins the outcome's leave-one-out term; the PRM's process rewards are untouched
    process = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * MASK
    prime = stages.advantage_stage(scores, process, MASK, 2, AlgorithmSection(), r, kl_rewards=kl)
    torch.testing.assert_close(prime, core.prime_advantages(shaped, process, MASK, 2)[0])


def test_the_filter_reads_the_labels_of_scores_outside_the_unit_interval():
    """Reward-model logits in groups of 2: (2.0, -1.0) is one right of two, (3.0, 0.5) both right at threshold 0,
    (-2.0, -0.1) none; a band of [0.2, 0.8] keeps the first group only."""
    scores = torch.tensor([2.0, -1.0, 3.0, 0.5, -2.0, -0.1])
    truncated = torch.zeros(6, dtype=torch.bool)
    f = FilterSection()
    kept = stages.filter_stage(scores, truncated, 2, f, RewardSection(outcome_labels="threshold"))
    assert kept.tolist() == [0, 1]
    with pytest.raises(ValueError, match="reward.outcome_labels"):
        stages.filter_stage(scores, truncated, 2, f, RewardSection())  # scores read as labels


@pytest.mark.parametrize("overrides, match", [
    ({"reward": {"outcome_labels": "logit"}}, "reward.outcome_labels"),
    ({"reward": {"label_threshold": 0.5}}, "reward.label_threshold"),
    ({"reward": {"overlong_buffer": -1}}, "reward.overlong_buffer"),
    ({"reward": {"overlong_buffer": 64}}, "reward.overlong_buffer=64: must be below rollout.max_new_tokens=64"),
    ({"reward": {"overlong_penalty": 0.0}}, "reward.overlong_penalty"),
    ({"reward": {"kl_coef": -0.1}}, "reward.kl_coef"),
    ({"reward": {"kl_estimator": "k2"}}, "reward.kl_estimator"),
    ({"reward": {"kl_coef": 0.01}, "algorithm": {"advantage": "oracle-from-error"}}, "oracle"),
    ({"verifier": {"tasks": {"rm": {"verifier": "reward_model", "path": "/models/rm"}}}},
     "reward.outcome_labels=score: verifier.tasks.rm scores outside"),
    ({"verifier": {"tasks": {"reward_model": {"path": "/models/rm"}}}, "algorithm": {"advantage": "rloo"}},
     "the accuracy-band filter need"),
    ({"verifier": {"tasks": {"graded": {"_target_": "pkg.graded", "real_valued": True}}}},
     "reward.outcome_labels=score: verifier.tasks.graded scores outside"),
])
def test_shaping_and_label_options_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        to_config(overrides)


def test_the_offline_prm_trainer_needs_a_label_rule_for_reward_model_scores():
    rm = {"verifier": {"tasks": {"rm": {"verifier": "reward_model", "path": "/models/rm"}}},
          "algorithm": {"advantage": "rloo"}, "filter": {"enabled": False}}
    to_config(rm)  # the policy trainer: RLOO reads the logits as they are
    with pytest.raises(ConfigError, match="verifier.tasks.rm scores outside .* the PRM's labels"):
        to_config(rm, offline_prm=True)
    to_config(rm | {"reward": {"outcome_labels": "threshold"}}, offline_prm=True)


def test_an_outcome_only_estimator_without_a_filter_reads_reward_model_scores_as_they_are():
    cfg = to_config({"verifier": {"tasks": {"rm": {"verifier": "reward_model", "path": "/models/rm"}}},
                     "algorithm": {"advantage": "reinforce++"}, "filter": {"enabled": False},
                     "reward": {"kl_coef": 0.01}})
    assert cfg.needs_reference and cfg.algorithm.token_kl
    labelled = to_config({"verifier": {"tasks": {"rm": {"verifier": "reward_model", "path": "/models/rm"}}},
                          "reward": {"outcome_labels": "sigmoid"}})
    assert labelled.algorithm.uses_prm
