"""Per-token log-probabilities and entropies from LM logits, in float32, without a float32 vocab copy.

Logits of a 7B model over a 3k-token response are [N, T, ~150k] in bf16; a float32 ``log_softmax`` of
that (plus what autograd keeps for it) doubles or triples the largest activation in the step. Here the
log-partition function is computed in row chunks, and the backward pass recomputes the softmax chunk by
chunk, so the only full-size tensors are the logits themselves and their gradient.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["token_logprobs", "token_entropy"]

# Rows are processed so that one float32 temporary holds at most this many elements (~128 MiB).
_CHUNK_ELEMENTS = 1 << 25


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 (used by gradcheck); every lower precision is lifted to float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_step(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(vocab, 1))


class _TokenLogprob(torch.autograd.Function):
    """log p(token) = logit[token] - logsumexp(logits), with a chunked, recomputing backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        idx = tokens.reshape(-1, 1).long()
        cdt = _compute_dtype(logits.dtype)
        lse = torch.empty(flat.shape[0], dtype=cdt, device=logits.device)
        step = _row_step(vocab)
        for start in range(0, flat.shape[0], step):
            lse[start:start + step] = torch.logsumexp(flat[start:start + step].to(cdt), dim=-1)
        picked = flat.gather(1, idx).squeeze(1).to(cdt)
        ctx.save_for_backward(logits, idx, lse)
        return (picked - lse).view(tokens.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, idx, lse = ctx.saved_tensors
        vocab = logits.shape[-1]
        flat = logits.reshape(-1, vocab)
        g = grad_out.reshape(-1, 1).to(lse.dtype)
        grad = torch.empty(flat.shape, dtype=logits.dtype, device=logits.device)
        step = _row_step(vocab)
        for start in range(0, flat.shape[0], step):
            stop = start + step
            # d/dlogits of (logit[y] - lse) = onehot(y) - softmax(logits)
            part = torch.exp(flat[start:stop].to(lse.dtype) - lse[start:stop, None])
            part.mul_(-g[start:stop])
            part.scatter_add_(1, idx[start:stop], g[start:stop])
            grad[start:stop] = part.to(grad.dtype)
        return grad.view(logits.shape), None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token under the distribution given by its logits row.

    Shapes: ``logits`` [N, T, V] (any float dtype), ``tokens`` [N, T] (integer ids, all within
    [0, V), including at padding) -> [N, T] float32 (float64 if the logits are float64).
    ``logits[:, t]`` must already be the prediction for ``tokens[:, t]``: the caller drops the last
    logit and the first token (the usual causal shift).
    Formula: log softmax(logits)[token] = logits[token] - logsumexp_v logits[v], computed in float32.
    Equivalent to veRL's ``logprobs_from_logits`` (log_softmax then gather); differentiable w.r.t.
    ``logits``. Padding positions are not masked here: combine with the response mask downstream.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    return _TokenLogprob.apply(logits, tokens)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every position.

    Shapes: ``logits`` [N, T, V] -> [N, T] float32 (float64 for float64 logits).
    Formula: H = logsumexp(z) - sum_v softmax(z)_v * z_v, the same as veRL's
    ``entropy_from_logits``. Computed in row chunks; gradients flow, but autograd keeps each chunk's
    float32 temporaries, so call it under ``torch.no_grad()`` when it is only logged (PRIME uses no
    entropy bonus). Padding positions are not masked here.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    cdt = _compute_dtype(logits.dtype)
    step = _row_step(vocab)
    parts = []
    for start in range(0, flat.shape[0], step):
        z = flat[start:start + step].to(cdt)
        lse = torch.logsumexp(z, dim=-1)
        probs = torch.exp(z - lse[:, None])
        parts.append(lse - (probs * z).sum(dim=-1))
    if not parts:
        return torch.zeros(logits.shape[:-1], dtype=cdt, device=logits.device)
    return torch.cat(parts).view(logits.shape[:-1])
