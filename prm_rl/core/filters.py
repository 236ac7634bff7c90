"""Group-level selection of prompts (PRIME's online prompt filter) on a batch of N = G * K responses.

Groups are contiguous: rows g*K .. g*K+K-1 are the K samples of prompt g.
"""
from __future__ import annotations

import torch

__all__ = ["group_mean_scores", "accuracy_band", "groups_without_truncation", "expand_group_mask"]

# Absorbs float rounding of a group mean so that a group sitting exactly on a bound (e.g. 1 of 5
# correct = 0.2) is kept whatever the dtype or the order of the summation.
_BAND_TOLERANCE = 1e-6


def _as_groups(x: torch.Tensor, group_size: int, *, min_size: int = 1, what: str = "this") -> torch.Tensor:
    """View a per-response tensor [N, ...] as [G, K, ...], checking that K divides N."""
    if not isinstance(group_size, int) or group_size < min_size:
        if min_size >= 2:
            raise ValueError(
                f"{what} needs group_size >= {min_size} (a leave-one-out / group baseline needs at least "
                f"two samples per prompt), got {group_size!r}"
            )
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if x.shape[0] % group_size != 0:
        raise ValueError(f"batch of {x.shape[0]} rows is not a whole number of groups of {group_size}")
    return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])


def group_mean_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean outcome score of each prompt's group.

    Shapes: ``scores`` [N] -> [G]. Formula: mean_k scores[g*K + k].
    This is the quantity PRIME's online filter (Cui et al. 2025, arXiv 2502.01456) thresholds.
    """
    grouped = _as_groups(scores, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    return grouped.mean(dim=1)


def accuracy_band(
    scores: torch.Tensor, group_size: int, low: float = 0.2, high: float = 0.8
) -> torch.Tensor:
    """Which groups PRIME keeps: mean score inside [low, high], both bounds inclusive.

    Shapes: ``scores`` [N] in [0, 1] (a verifier's, or the labels :func:`~prm_rl.core.outcome_labels` reads off
    scores outside it) -> [G] bool. Formula: low <= mean_k o_gk <= high (up to a 1e-6 tolerance for
    float rounding of the mean, computed in float64). Inclusive bounds as in the authors' code of PRIME
    (Cui et al. 2025, arXiv 2502.01456): with K = 5, groups with 1 or 4 correct answers are kept, while
    all-correct and all-wrong groups (no learning signal for a leave-one-out baseline) are dropped.
    """
    mean = group_mean_scores(scores, group_size).double()
    return (mean >= low - _BAND_TOLERANCE) & (mean <= high + _BAND_TOLERANCE)


def groups_without_truncation(truncated: torch.Tensor, group_size: int) -> torch.Tensor:
    """Groups none of whose responses were cut off at the length limit.

    Shapes: ``truncated`` [N] bool -> [G] bool. Formula: not any_k truncated[g*K + k].
    The authors' code of PRIME optionally drops such groups, so a truncated (unscored) response never
    enters a leave-one-out baseline.
    """
    grouped = _as_groups(truncated.bool(), group_size)
    return ~grouped.any(dim=1)


def expand_group_mask(group_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """Repeat a per-group decision for each of the group's K responses.

    Shapes: ``group_mask`` [G] -> [N] bool, N = G*K, with out[g*K + k] = group_mask[g].
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    return group_mask.bool().repeat_interleave(group_size)
