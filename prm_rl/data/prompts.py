"""Prompt sets for training and evaluation, and the order in which training draws them."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Union

import torch

from prm_rl.data import arithmetic, code_task
from prm_rl.data.sample import Sample

TaskConfig = Union[arithmetic.ArithmeticConfig, code_task.CodeConfig]

# The built-in tasks by name: (config class, generator module). Every generator module has the same
# interface: TASK_NAME, CHARACTERS (the built-in tokenizer's alphabet), heldout_problems, train_problems,
# prompt_text, to_sample, and problems with ``question`` and ``solution`` (the SFT demonstration). The config
# class is also the schema of ``task.<name>.*`` (prm_rl/config.py).
BUILTIN_TASKS: dict[str, tuple[type, ModuleType]] = {
    arithmetic.TASK_NAME: (arithmetic.ArithmeticConfig, arithmetic),
    code_task.TASK_NAME: (code_task.CodeConfig, code_task),
}


def task_generator(task: TaskConfig) -> ModuleType:
    """The generator module a built-in task config belongs to (dispatch on the config's type)."""
    for config_class, module in BUILTIN_TASKS.values():
        if type(task) is config_class:
            return module
    raise TypeError(f"not a built-in task config: {task!r}")


def make_task_config(name: str, knobs: dict[str, Any]) -> TaskConfig:
    """The config of built-in task ``name`` from its knobs (as stored in a warm-start spec)."""
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in task {name!r}; known: {', '.join(BUILTIN_TASKS)}")
    return BUILTIN_TASKS[name][0](**knobs)


@dataclass
class PromptSplits:
    train: list[Sample]
    eval: list[Sample]


def builtin_splits(task: TaskConfig, *, train_size: int, eval_size: int, seed: int) -> PromptSplits:
    """The built-in task's fixed held-out split (``seed``) and a disjoint RL prompt split (``seed + 1``)."""
    gen = task_generator(task)
    heldout = gen.heldout_problems(task, eval_size, seed)
    train = gen.train_problems(task, train_size, seed + 1, exclude={p.question for p in heldout})
    return PromptSplits(train=[gen.to_sample(p) for p in train], eval=[gen.to_sample(p) for p in heldout])


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
