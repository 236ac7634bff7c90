"""The built-in task: multi-step arithmetic chains whose every step is checkable.

A problem is a left-to-right chain such as ``14+9*9-10=?``. Its reference solution has one step per line
and ends with the boxed answer::

    14+9=23
    23*9=207
    207-10=197
    \\boxed{197}

Evaluation is strictly left to right (no operator precedence), so each line depends only on the previous
result and the next operand: that is what makes every step of a model's answer checkable
(:func:`first_wrong_step`). Training never sees step labels; they exist to judge a PRM.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, TypeVar

from prm_rl.data.sample import Sample
from prm_rl.errors import ConfigError

TASK_NAME = "arithmetic"
# Every character of its prompts and solutions: the built-in tokenizer's vocabulary (one token each).
CHARACTERS = list("0123456789+-*=?\n\\boxed{}")
_OPS = "+-*"
_STEP_RE = re.compile(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")


@dataclass
class ArithmeticConfig:
    """Difficulty knobs of the generator: ``task.arithmetic.*`` (prm_rl/recipes/base.yaml holds the same values,
    tests/unit/test_config.py proves it)."""

    min_steps: int = 2  # fewest operations in a chain
    max_steps: int = 4  # most operations in a chain
    max_operand: int = 20  # start value and +/- operands are drawn from 1..max_operand
    max_factor: int = 9  # '*' operands are drawn from 2..max_factor
    max_value: int = 999  # every intermediate result stays in 0..max_value

    def check(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ConfigError(f"task.arithmetic.min_steps={self.min_steps}: must be >= 1 and "
                              f"<= task.arithmetic.max_steps={self.max_steps}")
        if self.max_operand < 1 or self.max_factor < 2 or self.max_value < self.max_operand:
            raise ConfigError(f"task.arithmetic: need max_operand >= 1 (is {self.max_operand}), max_factor >= 2 "
                              f"(is {self.max_factor}) and max_value >= max_operand (is {self.max_value})")


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (operator, operand) pairs, applied left to right

    @property
    def question(self) -> str:
        return str(self.start) + "".join(f"{op}{x}" for op, x in self.ops) + "=?"

    def steps(self) -> list[tuple[int, str, int, int]]:
        """(left, op, right, result) for each line of the reference solution."""
        out, acc = [], self.start
        for op, x in self.ops:
            res = _apply(acc, op, x)
            out.append((acc, op, x, res))
            acc = res
        return out

    @property
    def answer(self) -> int:
        return self.steps()[-1][3]

    @property
    def solution(self) -> str:
        lines = [f"{a}{op}{b}={c}" for a, op, b, c in self.steps()]
        return "\n".join(lines) + "\n\\boxed{" + str(self.answer) + "}"


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def sample_problem(rng: random.Random, cfg: ArithmeticConfig) -> Problem:
    """Draw one chain; operators are re-drawn until every intermediate value lies in 0..max_value."""
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    acc = start = rng.randint(1, cfg.max_operand)
    ops = []
    while len(ops) < n_steps:
        op = rng.choice(_OPS)
        x = rng.randint(2, cfg.max_factor) if op == "*" else rng.randint(1, cfg.max_operand)
        res = _apply(acc, op, x)
        if 0 <= res <= cfg.max_value:
            ops.append((op, x))
            acc = res
    return Problem(start, tuple(ops))


def prompt_text(problem: Problem) -> str:
    """What the model sees; the response starts on the next line."""
    return problem.question + "\n"


def to_sample(problem: Problem) -> Sample:
    return Sample(prompt=prompt_text(problem), task=TASK_NAME, fields={"answer": problem.answer})


def heldout_problems(cfg: ArithmeticConfig, n: int, seed: int) -> list[Problem]:
    """The fixed held-out split: the first ``n`` distinct problems drawn with ``seed``."""
    return _distinct(cfg, n, seed, exclude=set())


def train_problems(cfg: ArithmeticConfig, n: int, seed: int, exclude: set[str]) -> list[Problem]:
    """``n`` distinct training problems, none of whose questions is in ``exclude`` (the held-out split)."""
    return _distinct(cfg, n, seed, exclude)


def _distinct(cfg: ArithmeticConfig, n: int, seed: int, exclude: set[str]) -> list[Problem]:
    return distinct_problems(lambda rng: sample_problem(rng, cfg), n, seed, exclude,
                             enlarge="task.arithmetic.max_steps/max_operand")


P = TypeVar("P")  # a problem type with a ``question`` string


def distinct_problems(draw: Callable[[random.Random], P], n: int, seed: int, exclude: set[str],
                      enlarge: str) -> list[P]:
    """The first ``n`` problems ``draw(rng)`` yields (``rng`` seeded with ``seed``) whose questions are new.

    Shared by every built-in task so that held-out and training splits are disjoint by question text and
    reproducible from their seed alone. ``enlarge`` names the knobs that widen the task's problem space,
    for the error raised when it is (nearly) exhausted.
    """
    rng, seen, out, misses = random.Random(seed), set(exclude), [], 0
    while len(out) < n:
        p = draw(rng)
        if p.question in seen:
            misses += 1
            if misses > 100 * n + 10_000:  # the task's problem space is (nearly) exhausted
                raise ConfigError(f"task: only {len(out)} distinct problems found of the {n} requested; "
                                 f"raise {enlarge} or lower the split sizes")
            continue
        misses = 0
        seen.add(p.question)
        out.append(p)
    return out


def step_operation(question: str, step: int) -> str:
    """The operator (``+``, ``-``, ``*``) the 1-based ``step`` of a solution applies, or ``answer`` for the
    boxed line after the last operation."""
    ops = re.findall(r"[+\-*](?=\d)", question.strip().split("=", 1)[0])
    return ops[step - 1] if 1 <= step <= len(ops) else "answer"


def first_wrong_step(question: str, response: str) -> int | None:
    """1-based index of the first response line that is not a correct next step, or None if all are.

    A line is correct when it reads ``a op b = c`` with ``a`` the previous result (the start value for
    line 1), ``op b`` the next operation of the question and ``c`` the true result. The final line must be
    ``\\boxed{answer}``. Used to judge process rewards; never for training.
    """
    m = re.fullmatch(r"(\d+)((?:[+\-*]\d+)+)=\?", question.strip())
    if m is None:
        raise ValueError(f"not an arithmetic question: {question!r}")
    acc = int(m.group(1))
    ops = [(o, int(x)) for o, x in re.findall(r"([+\-*])(\d+)", m.group(2))]
    lines = response.strip("\n").split("\n")
    for i, (op, x) in enumerate(ops):
        if i >= len(lines):
            return i + 1
        got = _STEP_RE.match(lines[i])
        res = _apply(acc, op, x)
        if got is None or (int(got[1]), got[2], int(got[3]), int(got[4])) != (acc, op, x, res):
            return i + 1
        acc = res
    if len(lines) <= len(ops) or lines[len(ops)] != "\\boxed{" + str(acc) + "}":
        return len(ops) + 1
    return None
