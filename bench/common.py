"""What the benchmark scripts share: running a training job into a run directory (a finished one is reused),
spreading jobs over processes, writing a report (OUT.json, OUT.md, OUT.png) and the numbers of its tables.

A script imports it as ``bench.common`` after putting the repository root on ``sys.path`` (its first lines), so
that ``python bench/NAME.py`` works from any directory. Each script keeps what it measures: its settings, what
it reads from a run, its tables and its plot.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]

# Every benchmark job: one rank (of one thread, OMP_NUM_THREADS=1), no checkpoints, no progress bar, no W&B.
JOB_DEFAULTS = ["trainer.cpu_ranks=1", "trainer.checkpoint_every=0", "trainer.progress_bar=false",
                "wandb.mode=disabled"]

Job = TypeVar("Job")
Result = TypeVar("Result")


# --- running --------------------------------------------------------------------------------------------

def train(out: Path, overrides: list[str], *, seed: int, steps: int, eval_every: int,
          entry: str = "launch/train.py", recipe: str = "math_ppo") -> tuple[list[dict], dict]:
    """One training job into run directory ``out``: ``python ENTRY +recipe=RECIPE``, then ``JOB_DEFAULTS``, then
    ``overrides`` (so they may change a default), then ``trainer.seed``, ``max_steps``, ``eval_every`` and
    ``output_dir``. ``entry`` is launch/train.py or a script that takes its overrides and writes the same files
    (bench/trl_grpo.py). Its output goes to ``out/bench.log``, first line the command. A directory that holds
    summary.json is a finished run and is reused without running anything, so an interrupted benchmark
    continues where it stopped; one of another command (other overrides, ``--set``) is an error, not a result.
    Returns (metrics.jsonl's rows, summary.json)."""
    cmd = [sys.executable, entry, f"+recipe={recipe}", *JOB_DEFAULTS, *overrides, f"trainer.seed={seed}",
           f"trainer.max_steps={steps}", f"trainer.eval_every={eval_every}", f"trainer.output_dir={out}"]
    log = out / "bench.log"
    if (out / "summary.json").exists() and log.exists():
        ran = log.read_text().split("\n", 1)[0].split(" ", 1)[-1]  # its command, past the interpreter
        if ran != " ".join(cmd[1:]):
            raise RuntimeError(f"{out} holds a finished run of another command (first line of {log}); give "
                               "another --runs folder or remove it")
    if not (out / "summary.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with log.open("w") as stream:
            stream.write(" ".join(cmd) + "\n")
            stream.flush()
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"{out.name} failed (exit {done.returncode}); see {log}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def run_jobs(run: Callable[[Job], Result], jobs: list[Job], parallel: int) -> list[Result]:
    """``run`` on every job, the results in the jobs' order: the first job alone, since it may train the SFT warm
    start, which the cache then holds for the others (two at once would both train it and race to store it);
    the rest ``parallel`` at a time (threads, each waiting on its own process)."""
    if not jobs:
        return []
    first = run(jobs[0])
    with ThreadPoolExecutor(parallel) as pool:
        return [first, *pool.map(run, jobs[1:])]


# --- the report -----------------------------------------------------------------------------------------

def pyplot():
    """``matplotlib.pyplot`` drawing to files only (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(out: Path, report: dict, markdown: str, plot: Callable[[], Figure], dpi: int = 110) -> None:
    """OUT.json (``report``), OUT.md (``markdown``, also printed) and OUT.png (the figure ``plot()`` draws, laid
    out tight and saved at ``dpi``); ``out`` is the path without its suffix, its folder made if missing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown)
    figure = plot()
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=dpi)
    pyplot().close(figure)
    print(markdown)


# --- numbers over seeds ---------------------------------------------------------------------------------

def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the numbers among ``values`` (None left out); None when there are none."""
    numbers = [v for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def cell(value: float | None, empty: str = "-") -> str:
    """A table cell: the value to three decimals, ``empty`` for None."""
    return empty if value is None else f"{value:.3f}"


def spread(values: Iterable[float | None], empty: str = "-", range_of_one: bool = False) -> str:
    """``mean (min-max)`` of the numbers among ``values`` (None left out), e.g. over seeds; one number alone is
    just itself unless ``range_of_one``; ``empty`` when there are none."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return empty
    if len(numbers) == 1 and not range_of_one:
        return cell(numbers[0])
    return f"{cell(mean(numbers))} ({min(numbers):.3f}-{max(numbers):.3f})"
