"""Reductions over the valid (unmasked) positions of padded response-token tensors.

Every function reads ``mask`` as binary: a non-zero entry marks a valid position, whatever its dtype.
Invalid positions are excluded with ``torch.where`` rather than a multiplication, so NaN or inf left in
padding by a model (e.g. log-probs of pad tokens) can never leak into a statistic.
"""
from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]


def _valid(mask: torch.Tensor) -> torch.Tensor:
    """Boolean view of a bool/float mask (non-zero = valid)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """[N, T] bool, True only at the last valid position of each row.

    A position is the last valid one when it is valid and it is the only valid position from there to
    the end of the row; this needs no assumption that the padding is on the right.
    """
    valid = _valid(mask)
    valid_from_here = valid.flip(-1).to(torch.int32).cumsum(-1).flip(-1)
    return valid & (valid_from_here == 1)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over valid positions.

    Shapes: ``x`` and ``mask`` broadcastable (typically both [N, T]). Returns a 0-dim tensor when
    ``dim`` is None, otherwise ``x`` reduced over ``dim``.
    Formula: sum_{i: mask_i != 0} x_i.
    """
    zeros = torch.zeros((), dtype=x.dtype, device=x.device)
    kept = torch.where(_valid(mask), x, zeros)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def _count(mask: torch.Tensor, like: torch.Tensor, dim: int | None) -> torch.Tensor:
    valid = _valid(mask).to(like.dtype)
    if valid.shape != like.shape:
        valid = valid.expand_as(like)
    return valid.sum() if dim is None else valid.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over valid positions (over ``dim`` if given, else over everything).

    Shapes as :func:`masked_sum`. Formula: sum_valid x / #valid. A slice with no valid position gives 0
    (not NaN), so an empty row contributes nothing to a later sum; veRL's ``masked_mean`` instead
    divides by ``#valid + 1e-8``, which also yields 0 there.
    """
    total = masked_sum(x, mask, dim)
    count = _count(mask, x, dim)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid positions; returns a 0-dim tensor.

    Formula: sum_valid (x - mean)^2 / (n - 1) when ``unbiased`` (Bessel's correction, as veRL's
    ``masked_var`` applies by default), else / n, with n = #valid.
    With fewer than two valid positions the result is 0; veRL raises there, but a one-token batch should
    not abort a training run (whitening then just centres the value to 0).
    """
    mean = masked_mean(x, mask)
    centred_sq = (x - mean) ** 2
    n = _count(mask, x, None)
    denom = (n - 1) if unbiased else n
    return masked_sum(centred_sq, mask) / denom.clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Standardise ``x`` with statistics over its valid positions; invalid positions return 0.

    Shapes: ``x``, ``mask`` [N, T] -> [N, T].
    Formula: (x - mean) * rsqrt(var + eps), with mean/var from :func:`masked_mean` /
    :func:`masked_var` (unbiased, like veRL's ``masked_whiten``). With ``shift_mean=False`` the mean
    is added back (only the scale changes), also as veRL does.
    Used by PRIME (Cui et al. 2025, arXiv 2502.01456) to whiten the summed RLOO returns over every
    valid token of the batch; the caller passes the global batch, so the statistics are global.
    """
    valid = _valid(mask)
    mean = masked_mean(x, valid)
    var = masked_var(x, valid, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
