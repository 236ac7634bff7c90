"""Where metrics go: ``metrics.jsonl`` in the run directory, W&B, and a console progress bar (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Shown in the progress bar's postfix, in this order, when present, under these short names.
_BAR_KEYS = {"acc/before_filter": "acc", "acc/kept_fraction": "kept", "prm/loss": "prm_loss",
             "prm/ranking_acc": "prm_rank", "policy/loss": "pg_loss", "policy/clip_frac": "clip",
             "time/step": "s/step"}


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """The metrics as floats, NaN/inf as None: JSON has no NaN (an empty class, no pair to rank, ...)."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` means online when an API key is configured, else offline (runs sync later with ``wandb sync``)."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the lines of steps after ``last_step`` (logged by a run that then died before its next checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError):  # a line torn by a kill mid-write
            continue
        if step <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class MetricsLogger:
    """``start_step > 0`` continues a resumed run: metrics.jsonl is cut back to that step and, given the
    ``run_id`` of the interrupted run, W&B appends to the same run."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, wandb_mode: str, project: str,
                 entity: str | None, name: str, config: dict[str, Any], progress_bar: bool,
                 run_id: str | None = None):
        self.path = run_dir / "metrics.jsonl"
        truncate_metrics(self.path, start_step)
        self.run = None
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(mode=mode, project=project, entity=entity, name=name, config=config,
                                  dir=str(run_dir), id=run_id, resume="allow" if run_id else None)
        self.run_id = self.run.id if self.run is not None else None
        self.bar = tqdm(total=total_steps, initial=start_step, desc="PRIME", dynamic_ncols=True,
                        disable=not progress_bar)
        self.wandb_mode = mode

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.record(step, metrics)
        self.bar.set_postfix({short: f"{metrics[k]:.3g}" for k, short in _BAR_KEYS.items() if k in metrics},
                             refresh=False)
        self.bar.update(1)

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """One line of metrics.jsonl and W&B, no progress tick (``log`` of a step, or the evaluation before
        step 1, recorded as step 0)."""
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **finite_or_none(metrics)}) + "\n")
        self._wandb("log", metrics, step=step)

    def table(self, step: int, key: str, columns: list[str], rows: list[list[Any]], html_column: str) -> None:
        """A W&B Table (``html_column`` holds HTML fragments, shown rendered); nothing when W&B is off."""
        if self.run is None:
            return
        import wandb

        where = columns.index(html_column)
        data = [[wandb.Html(v) if j == where else v for j, v in enumerate(row)] for row in rows]
        self._wandb("log", {key: wandb.Table(columns=columns, data=data)}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self._wandb("summary", values)

    def close(self) -> None:
        self.bar.close()
        self._wandb("finish")

    def _wandb(self, call: str, *args, **kwargs) -> None:
        """A W&B call that cannot stop training: on failure (e.g. its service process was killed by the
        signal that is stopping the job) W&B is switched off and metrics.jsonl carries on."""
        if self.run is None:
            return
        try:
            if call == "summary":
                self.run.summary.update(*args)
            else:
                getattr(self.run, call)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - logging must never end a run
            print(f"[prm_rl] W&B {call} failed ({type(err).__name__}: {err}); metrics go to "
                  f"{self.path} only from here on", file=sys.stderr, flush=True)
            self.run = None
