"""PRM evaluation metrics on hand-made cases, and AUROC against a brute-force pair count."""
import math

import torch

from prm_rl import core
from prm_rl.evaluation.prm_quality import first_wrong_steps, prm_metrics
from prm_rl.data.sample import Sample


def pair_count_auroc(scores, positive):
    """Second implementation: the fraction of (positive, negative) pairs ordered right, ties one half."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_perfect_inverted_and_ties():
    assert core.auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert core.auroc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert core.auroc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 0, 1])) == 0.5
    # one tie between a positive and a negative: 3 of 4 pairs right, the tie counts 1/2
    assert core.auroc(torch.tensor([0.1, 0.5, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])) == 0.875


def test_auroc_matches_pair_count_with_many_ties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randint(0, 5, (40,), generator=gen).float()  # heavy ties
        positive = torch.rand(40, generator=gen) < 0.4
        assert math.isclose(core.auroc(scores, positive), pair_count_auroc(scores.tolist(), positive.tolist()),
                            rel_tol=1e-12)


def test_auroc_empty_class_is_nan():
    assert math.isnan(core.auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    assert math.isnan(core.auroc(torch.tensor([0.1, 0.2]), torch.tensor([0, 0])))


def test_constant_guess_ce():
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    p = 0.25
    assert math.isclose(core.constant_guess_ce(labels), -(math.log(p) + 3 * math.log(1 - p)) / 4)
    assert core.constant_guess_ce(torch.tensor([1.0, 1.0])) < 1e-9
    assert math.isclose(core.constant_guess_ce(torch.tensor([1.0, 0.0])), math.log(2))


def test_step_rewards_compacts_spans():
    # row 0: tokens a b \n c \n d  -> steps [a b \n], [c \n], [d]; row 1: x \n y (last token closes a step)
    log_ratio = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1.0, -1.0, 2.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    step_end = torch.tensor([[0, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 0]], dtype=torch.bool)  # pad end ignored
    rewards, valid, end_pos = core.step_rewards(log_ratio, mask, step_end, beta=0.5)
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert torch.allclose(rewards, torch.tensor([[3.0, 4.5, 3.0], [0.0, 1.0, 0.0]]))
    assert end_pos[0].tolist() == [2, 4, 5] and end_pos[1, :2].tolist() == [1, 2]


def test_step_auroc_excludes_steps_after_first_error():
    # response 0 all right (steps 0.5, 0.4); response 1 wrong at step 2 (0.1), step 3 after it is huge (ignored)
    rewards = torch.tensor([[0.5, 0.4, 0.0], [0.6, 0.1, 99.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    first_wrong = torch.tensor([0, 2])
    assert core.step_auroc(rewards, valid, first_wrong) == 1.0
    # had step 3 counted as a negative it would have ranked above every positive
    assert core.step_auroc(rewards, valid, torch.tensor([0, 3])) < 0.5


def test_step_auroc_first_error_beyond_the_steps_and_empty_class():
    rewards = torch.tensor([[0.5, 0.4]])
    valid = torch.tensor([[True, True]])
    # the response stopped before its first wrong step: only correct steps, so no negatives
    assert math.isnan(core.step_auroc(rewards, valid, torch.tensor([3])))


def test_first_error_hit_rate_with_ties_and_baseline():
    rewards = torch.tensor([
        [0.3, -0.5, 0.2, 0.0],   # lowest on step 2 = first wrong: hit
        [-0.1, 0.4, -0.1, 0.0],  # lowest tied on steps 1 and 3, first wrong is 3: half a hit
        [0.2, 0.1, 0.0, 0.0],    # 2 steps, first wrong 1, lowest is step 2: miss
        [0.0, 0.0, 0.0, 0.0],    # all right: not counted
    ])
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    hit, baseline, n = core.first_error_hit_rate(rewards, valid, torch.tensor([2, 3, 1, 0]))
    assert n == 3
    assert math.isclose(hit, (1 + 0.5 + 0) / 3)
    assert math.isclose(baseline, (1 / 3 + 1 / 4 + 1 / 2) / 3)
    assert core.first_error_hit_rate(rewards, valid, torch.tensor([0, 0, 0, 0]))[2] == 0


def test_first_wrong_steps_of_arithmetic_rows_only():
    q = "14+9*9-10=?\n"
    samples = [Sample(q, "arithmetic"), Sample(q, "arithmetic"), Sample("hello", "math"), Sample(q, "arithmetic")]
    responses = ["14+9=23\n23*9=207\n207-10=197\n\\boxed{197}", "14+9=23\n23*9=206\n206-10=196\n\\boxed{196}",
                 "anything", "14+9=23\n23*9=207"]
    assert first_wrong_steps(samples, responses).tolist() == [0, 2, -1, 3]


def test_prm_metrics_of_a_perfect_prm():
    # two groups of 2; the right response of each gets +1 on every token, the wrong one -1 on its 2nd step
    mask = torch.ones(4, 4)
    step_end = torch.tensor([[0, 1, 0, 0]] * 4, dtype=torch.bool)  # steps: tokens 0-1, tokens 2-3
    log_ratio = torch.tensor([[1.0, 1, 1, 1], [1, 1, -5, -5], [1, 1, 1, 1], [1, 1, -5, -5]])
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6]] * 2)  # each group shares its first step and branches at the 2nd
    m = prm_metrics(log_ratio, ids, mask, scores, 2, 0.1, step_end, torch.tensor([0, 2, 0, 2]))
    assert m["ranking_acc"] == 1.0 and m["outcome_auroc"] == 1.0 and m["step_auroc"] == 1.0
    assert m["first_error_hit_rate"] == 1.0 and m["first_error_random"] == 0.5
    assert m["ce"] < m["ce_constant_guess"] == math.log(2)
    # the tree's free estimate: 0 on the shared step, +-0.5 where the group branches: it finds the wrong step too
    assert m["tree_step_auroc"] == 1.0 and m["tree_first_error_hit_rate"] == 1.0
    m = prm_metrics(-log_ratio, ids, mask, scores, 2, 0.1, step_end, torch.tensor([0, 2, 0, 2]))
    assert m["ranking_acc"] == 0.0 and m["ce"] > math.log(2) and m["first_error_hit_rate"] == 0.0
    assert m["tree_step_auroc"] == 1.0  # the tree does not read the PRM
    # no shared prefix: every response is its own branch from the root, so the wrong one's first step takes the blame
    m = prm_metrics(log_ratio, torch.arange(16).reshape(4, 4), mask, scores, 2, 0.1, step_end, torch.tensor([0, 2, 0, 2]))
    assert m["tree_first_error_hit_rate"] == 0.0


def test_eval_command_rejects_a_directory_that_is_not_a_run(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "prm_rl.cli.eval_prm", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'config.yaml'}: not found "
                                                "(RUN_DIR must be a prm_rl run directory)"]


def test_step_operation_names_what_a_step_does():
    from prm_rl.data.arithmetic import step_operation

    q = "14+9*9-10=?\n"
    assert [step_operation(q, k) for k in (1, 2, 3, 4, 5)] == ["+", "*", "-", "answer", "answer"]


def test_first_error_hits_per_response():
    rewards = torch.tensor([[0.3, -0.5, 0.2], [-0.1, 0.4, -0.1], [0.0, 0.0, 0.0]])
    valid = torch.ones(3, 3, dtype=torch.bool)
    hits, chance, rows = core.first_error_hits(rewards, valid, torch.tensor([2, 3, 0]))
    assert hits.tolist() == [1.0, 0.5] and rows.tolist() == [True, True, False]
    assert torch.allclose(chance, torch.tensor([1 / 3, 1 / 3], dtype=torch.float64))


def test_eval_prm_reads_run_configs_saved_before_tasks_had_their_own_sections():
    from prm_rl.evaluation.saved_run import migrate_legacy

    arithmetic = migrate_legacy({"task": {"name": "arithmetic", "min_steps": 1, "max_steps": 2, "max_operand": 20,
                                          "max_factor": 9, "max_value": 999, "seed": 5}})
    assert arithmetic["task"] == {"name": "arithmetic", "seed": 5, "arithmetic": {
        "min_steps": 1, "max_steps": 2, "max_operand": 20, "max_factor": 9, "max_value": 999}}
    code = migrate_legacy({"task": {"name": "code", "min_steps": 2, "max_factor": 5, "max_operand": 10}})
    assert code["task"] == {"name": "code", "code": {"max_slope": 5, "max_intercept": 10}}
    today = {"task": {"name": "code", "code": {"max_slope": 3}}}
    assert migrate_legacy(today) == {"task": {"name": "code", "code": {"max_slope": 3}}}
    assert migrate_legacy({"algorithm": {"gamma": 0.9}}) == {"algorithm": {"process_gamma": 0.9, "outcome_gamma": 0.9}}
