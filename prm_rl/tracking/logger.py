"""Where metrics go: ``metrics.jsonl`` in the run directory, W&B, and a console progress bar (rank 0 only)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

# Shown in the progress bar's postfix, in this order, when present.
_BAR_KEYS = ("acc/before_filter", "acc/kept_fraction", "prm/loss", "prm/ranking_acc", "policy/loss",
             "policy/clip_frac", "time/step")


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` means online when an API key is configured, else offline (runs sync later with ``wandb sync``)."""
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, wandb_mode: str, project: str,
                 entity: str | None, name: str, config: dict[str, Any], progress_bar: bool):
        self.path = run_dir / "metrics.jsonl"
        self.run = None
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":
            import wandb

            self.run = wandb.init(mode=mode, project=project, entity=entity, name=name, config=config,
                                  dir=str(run_dir), id=None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="PRIME", dynamic_ncols=True,
                        disable=not progress_bar)
        self.wandb_mode = mode

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items()}, step=step)
        self.bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3g}" for k in _BAR_KEYS if k in metrics},
                             refresh=False)
        self.bar.update(1)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def close(self) -> None:
        self.bar.close()
        if self.run is not None:
            self.run.finish()
