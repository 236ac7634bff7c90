"""Training rollouts for reading (tracking.*): the rows of the W&B table and rollouts.jsonl, which groups a
table shows, and the bounded, resumable rollouts.jsonl."""
import json
import math

import torch

from prm_rl.data import arithmetic
from prm_rl.models.tiny import build_char_tokenizer
from prm_rl.rollout.generate import Rollout, left_pad
from prm_rl.tracking import heatmap
from prm_rl.tracking.rollout_table import Groups, RolloutsFile, rollout_rows, table_groups
from prm_rl.trainer import stages

TOK = build_char_tokenizer(arithmetic.CHARACTERS)
PAD, EOS = TOK.pad_token_id, TOK.eos_token_id


def _rollout(prompts: list[str], responses: list[str]) -> Rollout:
    """Responses end in EOS and are right-padded to the longest (one more column of padding)."""
    prompt_ids, prompt_mask = left_pad([TOK.encode(p) for p in prompts], PAD)
    rows = [TOK.encode(r) + [EOS] for r in responses]
    width = max(map(len, rows)) + 1
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return Rollout(prompt_ids, prompt_mask, ids, mask, torch.zeros(len(rows), dtype=torch.bool))


# One group of K=2 answers to "1+2=?": a right one "1+2=3\n" (7 tokens with EOS) and a wrong one "9\n" (3).
GROUP = _rollout(["1+2=?\n", "1+2=?\n"], ["1+2=3\n", "9\n"])
WIDTH = GROUP.response_ids.shape[1]  # 8: the longest response (7) plus one pad column
# process rewards: step 1 of row 0 is "1+2=3\n" (tokens 0-5), then EOS alone closes a second step
REWARDS = torch.tensor([[0.1, 0.0, 0.0, 0.0, 0.2, -0.05, 0.3, 99.0],
                        [-0.4, 0.1, 0.0, 99.0, 99.0, 99.0, 99.0, 99.0]])  # 99: padding, must be ignored
ADVANTAGES = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 0.7, 0.9, 99.0],
                           [-1.0, -0.5, -0.6, 99.0, 99.0, 99.0, 99.0, 99.0]])


def test_trained_rows_carry_outcome_process_reward_advantage_and_a_heatmap():
    trained = Groups(GROUP, torch.tensor([1.0, 0.0]), True, REWARDS, ADVANTAGES)
    rows = rollout_rows(7, trained, TOK, stages.step_end_mask(stages.step_end_table(TOK, "\n"), GROUP))
    (right, heat_right), (wrong, heat_wrong) = rows
    assert right == {"step": 7, "prompt": "1+2=?", "response": "1+2=3\n", "outcome_score": 1.0, "kept": True,
                     "process_reward": right["process_reward"], "advantage": right["advantage"],
                     "advantage_min": 0.5, "advantage_max": right["advantage_max"]}
    assert math.isclose(right["process_reward"], 0.1 + 0.2 - 0.05 + 0.3, rel_tol=1e-6)
    assert math.isclose(right["advantage"], (5 * 0.5 + 0.7 + 0.9) / 7, rel_tol=1e-6)
    assert math.isclose(right["advantage_max"], 0.9, rel_tol=1e-6)
    assert wrong["response"] == "9\n" and wrong["outcome_score"] == 0.0
    assert math.isclose(wrong["process_reward"], -0.3, rel_tol=1e-6)
    assert math.isclose(wrong["advantage"], -0.7, rel_tol=1e-6) and wrong["advantage_min"] == -1.0
    # the heatmap: one token per character, steps closed by "\n" and by the last token
    assert heat_right.tokens == ["1", "+", "2", "=", "3", "\n", "<eos>"]
    assert heat_right.step_ends == [5, 6]
    assert [round(r, 6) for r in heat_right.step_rewards] == [0.25, 0.3]
    assert heat_wrong.step_ends == [1, 2] and [round(r, 6) for r in heat_wrong.step_rewards] == [-0.3, 0.0]
    assert "advantage +0.586" in heat_right.title
    json.dumps([r for r, _ in rows])  # rollouts.jsonl takes them as they are


def test_dropped_rows_are_empty_where_nothing_was_learned_and_nan_becomes_none():
    dropped = rollout_rows(3, Groups(GROUP, torch.tensor([0.0, 0.0]), False), TOK,
                           torch.ones_like(GROUP.response_mask, dtype=torch.bool))
    assert all(not f["kept"] and f["process_reward"] is None and f["advantage"] is None and h is None
               for f, h in dropped)
    poisoned = rollout_rows(3, Groups(GROUP, torch.tensor([1.0, 0.0]), True, None, ADVANTAGES * float("nan")), TOK)
    assert [f["advantage"] for f, _ in poisoned] == [None, None]  # JSON has no NaN
    columns, data = heatmap.table(poisoned)
    assert columns[-1] == "heatmap" and data[0][-1] == ""  # no process rewards (e.g. RLOO): no heatmap


def _groups(n: int, kept: bool, k: int = 2) -> Groups:
    rollout = _rollout([f"{i}+1=?\n" for i in range(n) for _ in range(k)], ["1\n"] * (n * k))
    return Groups(rollout, torch.arange(n * k, dtype=torch.float32), kept)


def test_a_table_shows_half_trained_half_dropped_groups_else_whichever_has_more():
    def counts(trained, dropped, wanted):
        shown = table_groups(_groups(trained, True) if trained else None, _groups(dropped, False) if dropped else None,
                             wanted, k=2)
        return [(g.kept, len(g.rollout) // 2) for g in shown]

    assert counts(3, 3, 4) == [(True, 2), (False, 2)]
    assert counts(3, 1, 4) == [(True, 3), (False, 1)]
    assert counts(1, 5, 4) == [(True, 1), (False, 3)]
    assert counts(0, 5, 2) == [(False, 2)] and counts(5, 0, 3) == [(True, 3)]
    first = table_groups(_groups(3, True), None, 1, k=2)[0]
    assert first.scores.tolist() == [0.0, 1.0] and TOK.decode(first.rollout.prompt_ids[1]).endswith("0+1=?\n")


def test_rollouts_jsonl_is_bounded_and_cut_back_on_resume(tmp_path):
    path, said = tmp_path / "rollouts.jsonl", []
    rows = [{"step": 0, "response": "x" * 80}]  # ~100 bytes a line
    file = RolloutsFile(path, max_mb=350e-6, start_step=0, log=said.append)
    for step in (1, 2, 3, 4):
        file.write(step, [dict(r, step=step) for r in rows])
    assert [json.loads(line)["step"] for line in path.open()] == [1, 2, 3]  # step 4 would pass 350 bytes
    file.write(5, [{"step": 5}])  # small, but the file is closed to further steps
    assert len(said) == 1 and "tracking.rollouts_jsonl_mb=0.00035" in said[0] and "step 4" in said[0]
    assert len(path.read_bytes()) <= 350

    resumed = RolloutsFile(path, max_mb=1.0, start_step=2, log=said.append)  # from the step-2 checkpoint
    assert [json.loads(line)["step"] for line in path.open()] == [1, 2]
    resumed.write(3, [{"step": 3}])
    assert [json.loads(line)["step"] for line in path.open()] == [1, 2, 3]
