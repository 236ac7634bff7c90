"""The group's prefix tree: values, per-segment credit and the tree estimator, on hand-built trees and against a
second, dictionary-based implementation."""
import pytest
import torch

from prm_rl import core

NL = 9  # the step delimiter's token id in these hand-built rows


def _rows(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [N, T] and mask from ragged rows (pad id 0)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def _dict_tree_credit(rows, scores, k, split):
    """Second implementation: a dictionary from prefix tuples to outcomes, walked segment by segment."""
    out = []
    for g in range(0, len(rows), k):
        group = rows[g:g + k]
        o = scores[g:g + k]
        below: dict[tuple, list[float]] = {}
        for r, s in zip(group, o):
            for t in range(len(r)):
                below.setdefault(tuple(r[:t + 1]), []).append(s)
        root = sum(o) / k
        for r in group:
            ends = [t for t in range(len(r)) if split == "token" or r[t] == NL or t == len(r) - 1]
            credit, previous, start = [], root, 0
            for e in ends:
                node = below[tuple(r[:e + 1])]
                value = sum(node) / len(node)
                credit += [value - previous] * (e + 1 - start)
                previous, start = value, e + 1
            out.append(credit)
    return out


def _credit(rows, scores, k, split="step"):
    ids, mask = _rows(rows)
    ends = core.segment_ends(mask, ids == NL, split)
    return core.tree_credit(ids, mask, torch.tensor(scores, dtype=torch.float32), k, ends), mask


def test_a_shared_first_step_gets_no_credit_and_the_branch_gets_the_value_change():
    # two steps each; rows 0-2 share step 1 "1 2 NL", row 3 starts differently; rows 0 and 1 share step 2
    rows = [[1, 2, NL, 3, 4], [1, 2, NL, 3, 4], [1, 2, NL, 5, 6], [7, NL, 3, 4]]
    scores = [1.0, 1.0, 0.0, 0.0]
    credit, mask = _credit(rows, scores, 4)
    root = 0.5
    # row 0: step 1 node {0,1,2} value 2/3; step 2 node {0,1} value 1
    assert credit[0, :3].tolist() == pytest.approx([2 / 3 - root] * 3)
    assert credit[0, 3:5].tolist() == pytest.approx([1 - 2 / 3] * 2)
    # row 2: same first step, then alone and wrong
    assert credit[2, 3:5].tolist() == pytest.approx([0 - 2 / 3] * 2)
    # row 3: alone from its first step
    assert credit[3, :4].tolist() == pytest.approx([0 - root] * 2 + [0.0] * 2)
    assert credit[3, 4] == 0  # padding
    # along each row the segment credits telescope to o_i - the group mean
    ids, _ = _rows(rows)
    ends = core.segment_ends(mask, ids == NL, "step")
    assert (credit * ends).sum(1).tolist() == pytest.approx([s - root for s in scores])


def test_steps_every_sibling_shares_carry_zero_credit():
    rows = [[1, NL, 2, NL, 3], [1, NL, 2, NL, 4]]
    credit, _ = _credit(rows, [1.0, 0.0], 2)
    assert credit[:, :4].abs().max() == 0  # two shared steps
    assert credit[:, 4].tolist() == pytest.approx([0.5, -0.5])  # K=2: the last step decides


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_all_right_and_all_wrong_groups_have_no_credit(score):
    rows = [[1, NL, 2], [3, NL], [1, NL, 5, 6, NL, 7], [8]]
    credit, _ = _credit(rows, [score] * 4, 4)
    assert credit.abs().max() == 0


def test_one_sample_branches_and_ragged_rows_match_a_dictionary_tree():
    gen = torch.Generator().manual_seed(0)
    for k, split in ((2, "step"), (4, "step"), (8, "step"), (4, "token")):
        rows, scores = [], []
        for _ in range(3 * k):  # 3 groups; tiny vocabulary so prefixes are shared often
            n = int(torch.randint(1, 9, (1,), generator=gen))
            rows.append([int(v) for v in torch.randint(8, 10, (n,), generator=gen)])
            scores.append(float(torch.randint(0, 2, (1,), generator=gen)))
        credit, mask = _credit(rows, scores, k, split)
        want = _dict_tree_credit(rows, scores, k, split)
        for i, row in enumerate(want):
            assert credit[i, :len(row)].tolist() == pytest.approx(row, abs=1e-6), (k, split, i)
            assert not credit[i, len(row):].any()


def test_a_row_that_ends_inside_anothers_prefix_shares_its_node():
    # row 1 stops (truncated) where row 0 goes on: the prefix "1 2" holds both
    rows = [[1, 2, 3], [1, 2]]
    values = core.prefix_values(*_rows(rows), torch.tensor([1.0, 0.0]), 2)
    assert values[0].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert values[1].tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_tree_estimator_is_rloo_plus_the_credit_before_whitening():
    rows = [[1, 2, NL, 3, 4], [1, 2, NL, 3, 4], [1, 2, NL, 5, 6], [7, NL, 3, 4]]
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    credit, mask = _credit(rows, scores.tolist(), 4)
    rloo = core.prime_advantages(scores, None, mask, 4, whiten=False)[1]
    got = core.tree_advantages(scores, credit, mask, 4, whiten=False)
    assert torch.allclose(got, rloo + credit)
    whitened = core.tree_advantages(scores, credit, mask, 4)
    assert torch.allclose(whitened, core.masked_whiten(rloo + credit, mask))


def test_a_bad_split_is_named():
    with pytest.raises(ValueError, match="split"):
        core.segment_ends(torch.ones(1, 2), None, "line")
    with pytest.raises(ValueError, match="step_end"):
        core.segment_ends(torch.ones(1, 2), None, "step")
