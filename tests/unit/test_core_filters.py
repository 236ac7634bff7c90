"""PRIME's online prompt filter helpers."""
import pytest
import torch

from prm_rl.core import accuracy_band, expand_group_mask, group_mean_scores, groups_without_truncation


def test_group_means_and_inclusive_band():
    scores = torch.tensor([
        1, 0, 0, 0, 0,   # 0.2 -> kept (inclusive low bound)
        1, 1, 1, 1, 0,   # 0.8 -> kept (inclusive high bound)
        1, 1, 1, 1, 1,   # 1.0 -> dropped
        0, 0, 0, 0, 0,   # 0.0 -> dropped
        1, 1, 0, 0, 0,   # 0.4 -> kept
    ], dtype=torch.float32)
    torch.testing.assert_close(group_mean_scores(scores, 5), torch.tensor([0.2, 0.8, 1.0, 0.0, 0.4]))
    assert accuracy_band(scores, 5).tolist() == [True, True, False, False, True]
    # custom band [0.3, 0.5]: only 0.4 survives
    assert accuracy_band(scores, 5, low=0.3, high=0.5).tolist() == [False, False, False, False, True]


def test_band_boundary_with_soft_scores():
    # float32 means are not bit-exact: 4/5 in float32 is 0.800000012 > 0.8 (tested above), and
    # (0.9 + 0.7) / 2 is 0.79999995; groups on a bound are kept either way
    scores = torch.tensor([0.3, 0.1, 0.9, 0.7], dtype=torch.float32)
    assert accuracy_band(scores, 2).tolist() == [True, True]
    assert accuracy_band(torch.tensor([0.19, 0.2]), 2).tolist() == [False]


def test_truncation_and_expand():
    truncated = torch.tensor([False, False, True, False, False, False])
    assert groups_without_truncation(truncated, 2).tolist() == [True, False, True]
    assert expand_group_mask(torch.tensor([True, False]), 3).tolist() == [True, True, True, False, False, False]


def test_bad_group_size():
    with pytest.raises(ValueError):
        group_mean_scores(torch.ones(5), 2)
    with pytest.raises(ValueError):
        group_mean_scores(torch.ones(4), 0)
