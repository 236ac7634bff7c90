"""Masked reductions and token log-probs/entropy, checked against hand-derived values."""
import math

import pytest
import torch

from prm_rl.core import logprobs as lp_mod
from prm_rl.core import masked_mean, masked_sum, masked_var, masked_whiten, token_entropy, token_logprobs

NAN, INF = float("nan"), float("inf")


def _x_mask():
    # valid values are {1, 2} in row 0 and {4} in row 1; padding holds junk that must never leak
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, 99.0, INF], [5.0, 6.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    return x, mask


def test_masked_sum_and_mean():
    x, mask = _x_mask()
    assert masked_sum(x, mask).item() == 7.0  # 1 + 2 + 4
    assert masked_sum(x, mask.bool(), dim=-1).tolist() == [3.0, 4.0, 0.0]
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    # the empty third row gives 0, not NaN
    assert masked_mean(x, mask.float(), dim=-1).tolist() == [1.5, 4.0, 0.0]


def test_masked_var_unbiased_and_biased():
    x, mask = _x_mask()
    # values {1, 2, 4}: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(x, mask).item() == pytest.approx(42 / 9 / 2)  # unbiased: / (3 - 1)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(42 / 9 / 3)
    # a single valid element has variance 0 rather than a division by zero
    assert masked_var(torch.tensor([[3.0, 8.0]]), torch.tensor([[1, 0]])).item() == 0.0


def test_masked_whiten_hand_values():
    # valid values {0, 1, 2}: mean 1, unbiased var (1 + 0 + 1) / 2 = 1 -> whitened {-1, 0, 1}
    x = torch.tensor([[0.0, 1.0, 5.0], [2.0, 7.0, NAN]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # shift_mean=False keeps the mean (1): only the scale (1 here) is changed
    out = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]))


def test_masked_whiten_moments():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g) * 3 + 2
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]])
    out = masked_whiten(x, mask)
    valid = out[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)  # unbiased std, like the whitening
    assert (out[~mask.bool()] == 0).all()


def test_token_logprobs_and_entropy_hand_values():
    # logits (0, 0, ln 2) -> probabilities (1/4, 1/4, 1/2); uniform row -> 1/3 each
    logits = torch.tensor([[[0.0, 0.0, math.log(2)], [1.0, 1.0, 1.0]]])
    tokens = torch.tensor([[2, 0]])
    torch.testing.assert_close(token_logprobs(logits, tokens), torch.tensor([[math.log(0.5), math.log(1 / 3)]]))
    # H = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2 ; uniform over 3 -> ln 3
    torch.testing.assert_close(token_entropy(logits), torch.tensor([[1.5 * math.log(2), math.log(3)]]))


def test_token_logprobs_matches_log_softmax_in_chunks(monkeypatch):
    monkeypatch.setattr(lp_mod, "_CHUNK_ELEMENTS", 7)  # forces several chunks of one row each (V=5)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    out = token_logprobs(logits, tokens)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref)
    torch.autograd.gradcheck(lambda z: token_logprobs(z, tokens), (logits,))
    ent_ref = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(token_entropy(logits), ent_ref)


def test_token_logprobs_bf16_returns_float32():
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 4, 11, generator=g) * 4).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 11, (2, 4), generator=g)
    out = token_logprobs(logits, tokens)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()
