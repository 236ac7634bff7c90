"""The built-in code task: write the linear function that a few input/output examples come from.

A problem shows examples of a hidden ``f(x)=a*x+b`` (``a`` >= 1, ``b`` >= 0) and asks for the program::

    f(x)=a*x+b
    f(2)=7 f(5)=16 f(7)=22

The reference solution (the SFT demonstration) derives the coefficients from the first two examples, one
operation per comment line, then writes the function in a fenced block, which the ``code`` verifier
extracts and runs against ``fields["tests"]``::

    ```python
    # 16-7=9
    # 5-2=3
    # 9/3=3
    # 3*2=6
    # 7-6=1
    def f(x):
     return 3*x+1
    ```

The tests check the two things the prompt asks for, in equal numbers: the slope alone (``assert
f(9)-f(4)==15``, at input pairs drawn apart from the shown ones, up to 2 * max_x) and the values
(``assert f(0)==1`` for the intercept, then each shown example). So a program with the right slope and a
wrong intercept scores 0.5, one with both right 1.0, and one with a wrong slope at most 0.125 (two
different lines meet at most once): partial credit that follows the derivation, which must get the slope
right before the intercept can be right.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from prm_rl.data import arithmetic
from prm_rl.data.arithmetic import distinct_problems
from prm_rl.data.sample import Sample
from prm_rl.errors import ConfigError

TASK_NAME = "code"
# The arithmetic characters (same ids) plus those of its prompts and programs: the tokenizer's vocabulary.
CHARACTERS = arithmetic.CHARACTERS + list(" ()#/:`afhnprtuy")


@dataclass
class CodeConfig:
    """Difficulty knobs of the generator: ``task.code.*`` (prm_rl/recipes/base.yaml holds the same values,
    tests/unit/test_config.py proves it)."""

    max_slope: int = 9  # a in 1..max_slope
    max_intercept: int = 20  # b in 0..max_intercept
    max_x: int = 9  # shown inputs are distinct values in 1..max_x (never 0: the intercept must be derived)
    num_examples: int = 3  # input/output examples shown; the derivation uses the first two

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if not 2 <= self.num_examples <= self.max_x:
            raise ConfigError(f"task.code.num_examples={self.num_examples}: must lie in 2..task.code.max_x="
                              f"{self.max_x} (the slope needs two distinct inputs)")
        if self.max_slope < 1 or self.max_intercept < 0:
            raise ConfigError(f"task.code: max_slope={self.max_slope} must be >= 1 and "
                              f"max_intercept={self.max_intercept} >= 0")


@dataclass(frozen=True)
class Problem:
    slope: int
    intercept: int
    xs: tuple[int, ...]  # the shown inputs, ascending
    slope_checks: tuple[tuple[int, int], ...]  # (u, v) with u < v: a test that f(v)-f(u) == slope*(v-u)

    def f(self, x: int) -> int:
        return self.slope * x + self.intercept

    @property
    def question(self) -> str:
        return "f(x)=a*x+b\n" + " ".join(f"f({x})={self.f(x)}" for x in self.xs)

    def derivation(self) -> list[str]:
        """The comment lines of the reference solution: slope from the first two examples, then intercept."""
        (x1, x2), (y1, y2) = self.xs[:2], (self.f(self.xs[0]), self.f(self.xs[1]))
        dy, dx, ax1 = y2 - y1, x2 - x1, self.slope * x1
        return [f"{y2}-{y1}={dy}", f"{x2}-{x1}={dx}", f"{dy}/{dx}={self.slope}",
                f"{self.slope}*{x1}={ax1}", f"{y1}-{ax1}={self.intercept}"]

    @property
    def solution(self) -> str:
        return function_response(self.slope, self.intercept, self.derivation())

    @property
    def tests(self) -> list[str]:
        """Slope-only checks, then the intercept and the shown examples (as many of each)."""
        slope = [f"assert f({v})-f({u})=={self.f(v) - self.f(u)}" for u, v in self.slope_checks]
        values = [f"assert f({x})=={self.f(x)}" for x in (0, *self.xs)]
        return slope + values


def function_response(slope: int, intercept: int, comments: Sequence[str] = ()) -> str:
    """A response in the demonstrations' format: comment lines, then ``f`` in a ```python block."""
    lines = ["```python", *(f"# {c}" for c in comments), "def f(x):", f" return {slope}*x+{intercept}", "```"]
    return "\n".join(lines)


def sample_problem(rng: random.Random, cfg: CodeConfig) -> Problem:
    """Draw a function, the inputs to show and the input pairs its slope is checked on."""
    slope, intercept = rng.randint(1, cfg.max_slope), rng.randint(0, cfg.max_intercept)
    xs = tuple(sorted(rng.sample(range(1, cfg.max_x + 1), cfg.num_examples)))
    starts = rng.sample(range(cfg.max_x + 1), cfg.num_examples + 1)  # distinct, so no test repeats
    checks = tuple((u, u + rng.randint(1, cfg.max_x)) for u in starts)
    return Problem(slope, intercept, xs, checks)


def prompt_text(problem: Problem) -> str:
    """What the model sees; the response starts on the next line."""
    return problem.question + "\n"


def to_sample(problem: Problem) -> Sample:
    return Sample(prompt=prompt_text(problem), task=TASK_NAME, fields={"tests": problem.tests})


def heldout_problems(cfg: CodeConfig, n: int, seed: int) -> list[Problem]:
    """The fixed held-out split: the first ``n`` distinct problems drawn with ``seed``."""
    return train_problems(cfg, n, seed, exclude=set())


def train_problems(cfg: CodeConfig, n: int, seed: int, exclude: set[str]) -> list[Problem]:
    """``n`` distinct problems, none of whose questions is in ``exclude`` (the held-out split)."""
    return distinct_problems(lambda rng: sample_problem(rng, cfg), n, seed, exclude,
                             enlarge="task.code.max_slope/max_intercept")
