"""Prompt sets for training and evaluation, and the order in which training draws them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prm_rl.data import arithmetic
from prm_rl.data.sample import Sample


@dataclass
class PromptSplits:
    train: list[Sample]
    eval: list[Sample]


def builtin_splits(task: arithmetic.ArithmeticConfig, *, train_size: int, eval_size: int, seed: int) -> PromptSplits:
    """The built-in task's fixed held-out split (``seed``) and a disjoint RL prompt split (``seed + 1``)."""
    heldout = arithmetic.heldout_problems(task, eval_size, seed)
    train = arithmetic.train_problems(task, train_size, seed + 1, exclude={p.question for p in heldout})
    return PromptSplits(train=[arithmetic.to_sample(p) for p in train],
                        eval=[arithmetic.to_sample(p) for p in heldout])


class PromptStream:
    """Endless, seeded epochs over a prompt list: every rank derives the same order without talking.

    ``position`` (prompts consumed so far) fully determines where the stream is, so it can be saved and
    restored.
    """

    def __init__(self, samples: list[Sample], seed: int, position: int = 0):
        if not samples:
            raise ValueError("the training prompt set is empty")
        self.samples, self.seed, self.position = samples, seed, position

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.samples), generator=gen).tolist()

    def take(self, n: int) -> list[Sample]:
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.samples))
            order = self._order(epoch)
            chunk = order[offset:offset + n - len(out)]
            out.extend(self.samples[i] for i in chunk)
            self.position += len(chunk)
        return out
