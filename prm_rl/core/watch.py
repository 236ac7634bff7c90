"""Signals of reward hacking, logged every step (``watch/*``) so that a user sees it coming.

With any learned dense reward the policy may learn to please the reward model instead of solving the task:
responses drift in length, fill up with repeated text, and the PRM's reward rises while the verifier's
score does not (PURE, arXiv 2504.15275, saw this within 30-200 steps with summed process returns).
"""
from __future__ import annotations

import torch

from .masked import _valid

__all__ = ["repeated_ngram_fraction", "correlation"]


def repeated_ngram_fraction(ids: torch.Tensor, mask: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Per response, the share of its token n-grams that already occurred earlier in the same response.

    Shapes: ``ids``, ``mask`` [N, T] -> [N] in [0, 1); 0 for a response shorter than n tokens. Plain text
    repeats little (here: a chain of distinct arithmetic steps); a looping response approaches 1.
    """
    valid = _valid(mask)
    out = torch.zeros(ids.shape[0], dtype=torch.float32)
    for i in range(ids.shape[0]):
        row = ids[i][valid[i]].tolist()
        grams = [tuple(row[j:j + n]) for j in range(len(row) - n + 1)]
        if grams:
            out[i] = 1.0 - len(set(grams)) / len(grams)
    return out


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two [N] tensors; NaN when either is constant (e.g. every outcome equal)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = a.norm() * b.norm()
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")
