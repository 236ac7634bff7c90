"""Oracle controls from the task's own step checker (prm_rl.core.checked, the oracle-* estimators): hand-built
rows, and the checker read off real text of the built-in arithmetic task."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prm_rl import core
from prm_rl.config import ConfigError, to_config
from prm_rl.data import arithmetic
from prm_rl.data.sample import text_rollout
from prm_rl.models.tiny import build_char_tokenizer
from prm_rl.trainer import stages

PROMPT_FILE = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "prime.jsonl"
# One row of 9 tokens, three steps closed at tokens 2, 5 and 8.
ENDS = torch.tensor([[0, 0, 1, 0, 0, 1, 0, 0, 1]], dtype=torch.bool)
MASK = torch.ones(1, 9, dtype=torch.long)


@pytest.mark.parametrize("first_wrong, expected", [
    (0, [0, 0, 1, 0, 0, 1, 0, 0, 1]),  # every step right
    (1, [0, 0, -1, 0, 0, 0, 0, 0, 0]),
    (2, [0, 0, 1, 0, 0, -1, 0, 0, 0]),
    (3, [0, 0, 1, 0, 0, 1, 0, 0, -1]),
    (5, [0, 0, 1, 0, 0, 1, 0, 0, -1]),  # stopped before its wrong step: the last one carries it
])
def test_step_correctness_rewards_by_hand(first_wrong, expected):
    rewards = core.step_correctness_rewards(ENDS, torch.tensor([first_wrong]))
    assert rewards[0].tolist() == expected


def test_first_error_credit_spares_the_correct_prefix_and_optionally_what_follows():
    advantages = torch.full((2, 9), -0.5)
    advantages[1] = 0.75
    step_rewards = core.step_correctness_rewards(ENDS.repeat(2, 1), torch.tensor([2, 2]))
    scores = torch.tensor([0.0, 1.0])  # row 1 is right by its outcome (a lucky answer): left alone
    through = core.first_error_credit(advantages, step_rewards, scores, MASK.repeat(2, 1), through_end=True)
    assert through[0].tolist() == [0, 0, 0, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5]
    assert through[1].tolist() == [0.75] * 9
    only = core.first_error_credit(advantages, step_rewards, scores, MASK.repeat(2, 1), through_end=False)
    assert only[0].tolist() == [0, 0, 0, -0.5, -0.5, -0.5, 0, 0, 0]


def test_a_wrong_row_without_a_marked_error_keeps_its_advantages():
    advantages = torch.full((1, 9), -0.5)
    kept = core.first_error_credit(advantages, torch.zeros(1, 9), torch.tensor([0.0]), MASK, through_end=False)
    assert torch.equal(kept, advantages)


def test_the_stage_reads_the_checker_off_decoded_text():
    tok = build_char_tokenizer(arithmetic.CHARACTERS)
    question = "7+5*2=?"
    right = "7+5=12\n12*2=24\n\\boxed{24}"
    wrong = "7+5=12\n12*2=25\n\\boxed{25}"
    assert arithmetic.first_wrong_step(question, wrong) == 2
    batch = text_rollout(tok, [question, question], [right, wrong])
    rewards = stages.checked_step_rewards_stage(tok, batch, stages.step_end_table(tok, "\n"))
    assert rewards[0][rewards[0] != 0].tolist() == [1, 1, 1]  # two steps and the boxed answer, all right
    assert rewards[1][rewards[1] != 0].tolist() == [1, -1]
    newline = tok.convert_tokens_to_ids("\n")
    assert batch.response_ids[1][rewards[1] == -1].tolist() == [newline]  # on the wrong step's closing token


def test_the_oracle_estimators_on_a_group():
    """oracle-steps rewards right steps in an all-wrong group (the outcome gives it nothing); oracle-from-error
    is outcome RLOO with the correct prefixes of wrong responses zeroed."""
    mask = MASK.repeat(2, 1)
    ends = ENDS.repeat(2, 1)
    common = dict(outcome_coef=1.0, process_coef=1.0, process_gamma=1.0, outcome_gamma=1.0, whiten=False,
                  tree_credit=None)
    all_wrong = torch.tensor([0.0, 0.0])
    steps = core.step_correctness_rewards(ends, torch.tensor([3, 1]))  # row 0 got two steps right, row 1 none
    adv = core.ADVANTAGE_ESTIMATORS["oracle-steps"].fn(all_wrong, steps, mask, 2, **common)
    assert adv[0, 0] > 0 > adv[1, 0]
    mixed = torch.tensor([1.0, 0.0])
    steps = core.step_correctness_rewards(ends, torch.tensor([0, 2]))
    rloo = core.ADVANTAGE_ESTIMATORS["rloo"].fn(mixed, None, mask, 2, **common)
    from_error = core.ADVANTAGE_ESTIMATORS["oracle-from-error"].fn(mixed, steps, mask, 2, **common)
    assert torch.equal(from_error[0], rloo[0])
    assert from_error[1, :3].tolist() == [0, 0, 0] and torch.equal(from_error[1, 3:], rloo[1, 3:])


def test_a_task_without_a_step_checker_refuses_the_oracles_in_one_line():
    assert to_config({"algorithm": {"advantage": "oracle-steps"}}).algorithm.checked_steps
    with pytest.raises(ConfigError, match=r"^algorithm\.advantage=oracle-steps: credits steps by the task's own"):
        to_config({"algorithm": {"advantage": "oracle-steps"}, "task": {"name": "code"}})
    with pytest.raises(ConfigError, match=r"^algorithm\.advantage=oracle-from-error: credits steps"):
        to_config({"algorithm": {"advantage": "oracle-from-error"}, "data": {"train": str(PROMPT_FILE)}})
