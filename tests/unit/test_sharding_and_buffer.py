"""Row ownership over ranks, and the carry-over buffer of kept groups."""
import torch

from prm_rl.rollout.generate import Rollout, concat_rollouts
from prm_rl.trainer.buffer import GroupBuffer
from prm_rl.trainer.sharding import micro_batches, split_minibatches


def test_every_row_is_owned_by_exactly_one_rank_and_ranks_run_equal_counts():
    rows = torch.tensor([9, 4, 7, 1, 3, 8, 0])
    plans = [micro_batches(rows, 2, rank=r, world=3) for r in range(3)]
    assert {len(p) for p in plans} == {2}  # ceil(ceil(7/3)/2) = 2 on every rank
    owned = [i for p in plans for mb in p if mb.weight for i in mb.rows.tolist()]
    assert sorted(owned) == sorted(rows.tolist())
    assert [mb.is_last for mb in plans[0]] == [False, True]


def test_a_rank_without_rows_runs_weightless_stand_ins():
    plan = micro_batches(torch.tensor([5]), 4, rank=1, world=2)
    assert len(plan) == 1 and plan[0].weight == 0.0 and plan[0].rows.tolist() == [5]


def test_groups_stay_together():
    rows = torch.arange(12)  # 3 groups of 4
    plan = micro_batches(rows, 5, group_size=4, rank=0, world=2)  # owns groups 0 and 2, one group per micro
    assert [mb.rows.tolist() for mb in plan] == [[0, 1, 2, 3], [8, 9, 10, 11]]


def test_a_token_budget_packs_short_rows_together_and_long_rows_apart():
    """Lengths 10, 10, 10, 40, 10, 10 (one rank, budget 40 padded tokens, at most 4 rows): [0,1,2] (3 x 10),
    then row 3 alone (40), then [4,5]."""
    lengths = torch.tensor([10, 10, 10, 40, 10, 10])
    mbs = micro_batches(torch.arange(6), 4, lengths=lengths, max_tokens=40, rank=0, world=1)
    assert [mb.rows.tolist() for mb in mbs] == [[0, 1, 2], [3], [4, 5]]
    assert [mb.is_last for mb in mbs] == [False, False, True]
    four = micro_batches(torch.arange(6), 4, lengths=torch.full((6,), 5), max_tokens=1000, rank=0, world=1)
    assert [mb.rows.tolist() for mb in four] == [[0, 1, 2, 3], [4, 5]]  # the row cap still holds


def test_under_a_token_budget_ranks_still_run_equal_counts_and_keep_groups():
    """Groups of 2, round-robin: rank 0 owns groups 0, 2 (rows 0,1,4,5), rank 1 groups 1, 3 (rows 2,3,6,7).
    Rank 1's groups are long (30 each): one per micro-batch; rank 0's short ones share one, then a stand-in."""
    lengths = torch.tensor([5, 5, 30, 30, 5, 5, 30, 30])
    zero, one = (micro_batches(torch.arange(8), 8, group_size=2, lengths=lengths, max_tokens=64, rank=r, world=2)
                 for r in (0, 1))
    assert [mb.rows.tolist() for mb in one] == [[2, 3], [6, 7]] and [mb.weight for mb in one] == [1.0, 1.0]
    assert [mb.rows.tolist() for mb in zero][0] == [0, 1, 4, 5] and [mb.weight for mb in zero] == [1.0, 0.0]
    assert zero[-1].is_last and one[-1].is_last


def test_split_minibatches_never_returns_empty_parts():
    parts = split_minibatches(torch.arange(3), 4)
    assert [p.tolist() for p in parts] == [[0], [1], [2]]


def rollout(prompt_width, response_width, n, fill):
    ids = torch.full((n, prompt_width), fill)
    resp = torch.full((n, response_width), fill)
    return Rollout(ids, torch.ones_like(ids), resp, torch.ones_like(resp), torch.zeros(n, dtype=torch.bool))


def test_concat_pads_prompts_left_and_responses_right():
    out = concat_rollouts([rollout(2, 3, 1, 5), rollout(4, 1, 1, 6)], pad_id=0)
    assert out.prompt_ids.tolist() == [[0, 0, 5, 5], [6, 6, 6, 6]]
    assert out.prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert out.response_ids.tolist() == [[5, 5, 5], [6, 0, 0]]
    assert out.response_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_buffer_hands_out_oldest_groups_and_keeps_the_rest():
    buf = GroupBuffer(group_size=2, pad_id=0)
    buf.add(rollout(2, 2, 4, 1), torch.tensor([1.0, 0.0, 0.0, 1.0]))  # 2 groups
    buf.add(rollout(3, 1, 2, 2), torch.tensor([1.0, 0.0]))  # 1 group
    assert len(buf) == 3
    batch, scores = buf.take(2)
    assert len(batch) == 4 and scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert len(buf) == 1
    rest, rest_scores = buf.take(5)
    assert rest.prompt_ids[:, -1].tolist() == [2, 2] and rest_scores.tolist() == [1.0, 0.0]
    assert len(buf) == 0
