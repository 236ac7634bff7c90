"""Best-of-N read-outs, the paired selection report and the top-pick profile on hand-built responses."""
import math

import pytest
import torch

from prm_rl import core
from prm_rl.core.selection import at_step_ends, last_step
from prm_rl.evaluation.best_of_n import (METHODS, READOUTS, VOTES, ScoredResponses, readout_scores,
                                         selection_report, text_copies, top_pick_profile, vote_weights)


def scored(step_rewards, step_values, valid, correct, tokens, first_wrong, answers, ref_logprob, responses,
           beta=0.5) -> ScoredResponses:
    return ScoredResponses(correct=torch.tensor(correct), answers=torch.tensor(answers),
                           step_rewards=torch.tensor(step_rewards), step_values=torch.tensor(step_values),
                           step_valid=torch.tensor(valid), ref_logprob=torch.tensor(ref_logprob),
                           tokens=torch.tensor(tokens), first_wrong=torch.tensor(first_wrong), responses=responses,
                           beta=beta)


# One prompt, three responses: a right one of three steps, a wrong one of two (its first step wrong) that the
# reference finds unlikely, and a right one whose last step is its weakest.
THREE = scored(step_rewards=[[0.1, 0.2, 0.3], [0.5, 0.4, 0.0], [0.3, 0.3, -0.2]],
               step_values=[[0.02, 0.03, 0.04], [0.10, 0.09, 0.0], [0.05, 0.05, 0.01]],
               valid=[[True, True, True], [True, True, False], [True, True, True]],
               correct=[[1, 0, 1]], tokens=[[15, 10, 15]], first_wrong=[[0, 1, 0]], answers=[[0, 1, 0]],
               ref_logprob=[-1.0, -6.0, -2.0], responses=["a", "b", "c"])


def test_at_step_ends_reads_each_step_end_and_zeroes_missing_steps():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0], [7.0, 8.0, 9.0, 0.0, 0.0]])
    end_pos = torch.tensor([[1, 3, 0], [2, 0, 0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(at_step_ends(values, end_pos, valid), torch.tensor([[2.0, 4.0, 0.0], [9.0, 0.0, 0.0]]))


def test_last_step_is_the_last_valid_column():
    values = torch.tensor([[1.0, 2.0, 9.0], [5.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    torch.testing.assert_close(last_step(values, valid), torch.tensor([2.0, 5.0, 0.0]))


def test_each_readout_on_hand_built_steps():
    got = {name: score.flatten() for name, score in readout_scores(THREE).items()}
    assert set(got) == set(READOUTS) and METHODS[:len(READOUTS)] == tuple(READOUTS)
    torch.testing.assert_close(got["prm_min"], torch.tensor([0.1, 0.4, -0.2]))
    torch.testing.assert_close(got["prm_sum"], torch.tensor([0.6, 0.9, 0.4]))
    torch.testing.assert_close(got["prm_mean"], torch.tensor([0.2, 0.45, 0.4 / 3]))
    torch.testing.assert_close(got["prm_last"], torch.tensor([0.3, 0.4, -0.2]))
    torch.testing.assert_close(got["prm_value"], torch.tensor([0.04, 0.09, 0.01]))
    torch.testing.assert_close(got["prm_value_min"], torch.tensor([0.02, 0.09, 0.01]))
    # q_K + beta * log pi_ref(y), beta = 0.5: the unlikely wrong response falls from first to last
    torch.testing.assert_close(got["prm_policy"], torch.tensor([0.6 - 0.5, 0.9 - 3.0, 0.4 - 1.0]))
    torch.testing.assert_close(got["ref_likelihood"], torch.tensor([-1.0, -6.0, -2.0]))


def test_prm_value_and_prm_policy_from_the_token_log_probs():
    """Built from the step tensors, prm_value is v_T = beta * (sum of the log-ratios) / T of the prefix loss and
    prm_policy is beta * log pi_phi(y), the PRM model's own log-likelihood of the response."""
    beta = 0.5
    prm_logp = torch.tensor([[-0.1, -0.9, -0.2, -0.3, 0.0], [-0.4, -0.2, -0.5, 0.0, 0.0]])
    ref_logp = torch.tensor([[-0.3, -0.5, -1.2, -0.9, 0.0], [-0.7, -0.3, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    log_ratio = core.implicit_log_ratio(prm_logp, ref_logp, mask)
    step_end = torch.tensor([[False, True, False, False, False], [True, False, False, False, False]])
    rewards, valid, end_pos = core.step_rewards(log_ratio, mask, step_end, beta)
    values = at_step_ends(core.prefix_implicit_values(log_ratio, mask, beta), end_pos, valid)
    responses = ScoredResponses(correct=torch.ones(1, 2, dtype=torch.long), answers=torch.zeros(1, 2, dtype=torch.long),
                                step_rewards=rewards, step_values=values, step_valid=valid,
                                ref_logprob=core.masked_sum(ref_logp, mask, dim=-1), tokens=mask.sum(dim=1).view(1, 2),
                                first_wrong=torch.zeros(1, 2, dtype=torch.long), responses=["a", "b"], beta=beta)
    v_last = beta * log_ratio.sum(dim=1) / mask.sum(dim=1)
    torch.testing.assert_close(READOUTS["prm_value"](responses), v_last)
    # v at the first step end: beta * (0.2 - 0.4) / 2 and beta * 0.3 / 1; the lower of v_1, v_T per row
    torch.testing.assert_close(READOUTS["prm_value_min"](responses),
                               torch.minimum(torch.tensor([beta * -0.2 / 2, beta * 0.3]), v_last))
    torch.testing.assert_close(READOUTS["prm_policy"](responses), beta * prm_logp.sum(dim=1))


def test_text_copies_counts_identical_responses_per_prompt():
    got = text_copies(["x", "y", "x", "x", "z", "z"], n=3)
    assert got.tolist() == [[2, 1, 2], [1, 2, 2]]


def test_ratio_vote_weighs_each_response_by_the_likelihood_ratio():
    """exp(q_K / beta) per response, shifted per prompt: an answer held by two responses at ratio 1 loses to one
    at ratio e^3, where majority voting and a sigmoid weight (all near 0.5) keep the two."""
    answers, correct = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 0, 1]])
    three = scored(step_rewards=[[0.0], [0.0], [1.5]], step_values=[[0.0], [0.0], [0.5]], valid=[[True]] * 3,
                   correct=correct.tolist(), tokens=[[3, 3, 3]], first_wrong=[[1, 1, 0]], answers=answers.tolist(),
                   ref_logprob=[-1.0, -1.0, -4.0], responses=["a", "a", "b"], beta=0.5)
    weights = vote_weights(three, torch.zeros(1, 3))
    assert set(weights) | {"majority", "random"} == set(VOTES)
    torch.testing.assert_close(weights["ratio_vote"], torch.tensor([[math.exp(-3), math.exp(-3), 1.0]],
                                                                   dtype=torch.float64))
    report = selection_report(correct, {}, answers, weights, [3], draws=4, seed=0)
    assert report["best_of_n"]["ratio_vote"][3] == 1.0 and report["best_of_n"]["majority"][3] == 0.0
    assert report["best_of_n"]["weighted_vote"][3] == 0.0  # sigmoid(0) for all: majority voting


def test_selection_report_pairs_methods_on_the_same_subsets():
    correct = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
    answers = torch.tensor([[0, 1, 0, 2], [0, 1, 0, 0]])
    oracle = correct.float()  # a read-out that knows the answer picks a right response whenever a subset has one
    report = selection_report(correct, {"oracle": oracle, "same_as_random": torch.zeros(2, 4)}, answers,
                              {"weighted_vote": torch.ones(2, 4)}, [1, 2, 4], draws=16, seed=3)
    assert report["best_of_n"]["oracle"][4] == 1.0
    # majority at N=4: prompt 0 votes answer 0 (right), prompt 1 votes answer 0 (wrong)
    assert report["best_of_n"]["majority"][4] == 0.5
    # the same subsets for every method: a read-out that ties everywhere is the random pick, exactly
    assert report["best_of_n"]["same_as_random"] == report["best_of_n"]["random"]
    # weights all 1: the weighted vote is majority voting, and its difference from majority exactly 0
    assert report["vs_majority"]["weighted_vote"][2] == [0.0, 0.0, 0.0]
    assert report["vs_majority"]["oracle"][4][0] == pytest.approx(0.5)


def test_top_pick_profile_describes_the_highest_scored_response():
    profile = top_pick_profile(THREE, readout_scores(THREE))
    # prm_sum and prm_min pick the short wrong response (0.9, 0.4 are the highest)
    for name in ("prm_sum", "prm_min", "prm_value"):
        assert profile[name]["correct"] == 0.0 and profile[name]["steps"] == 2.0 and profile[name]["tokens"] == 10.0
        assert profile[name]["first_wrong_step"] == 1.0 and profile[name]["ref_logprob"] == -6.0
    assert profile["prm_policy"]["correct"] == 1.0 and profile["prm_policy"]["copies"] == 1.0
    assert profile["all"]["steps"] == pytest.approx(8 / 3) and profile["right"]["tokens"] == 15.0
    assert profile["right"]["first_wrong_step"] is None  # no wrong response among the right ones
    # prm_sum ranks 0.9 > 0.6 > 0.4: the wrong response first, so its correlation with correctness is negative
    assert profile["prm_sum"]["rank_correlation_correct"] < 0
