"""Training rollouts for reading: a W&B table every ``tracking.rollout_table_every`` steps (TRL's completions
table, plus PRIME's credit) and every rollout in ``RUN/rollouts.jsonl`` (``tracking.rollouts_jsonl_mb``).

A row is one response: its step, prompt, response, outcome score, whether its group was trained on this step
(``kept``) or dropped by the filter, and for trained rows the sum of its process rewards and its advantage
(mean, min and max over its tokens). Dropped rows have neither (None: an empty cell). The table adds the
response drawn with each token coloured by its process reward, as the held-out heatmaps are.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from prm_rl.rollout.generate import Rollout
from prm_rl.tracking import heatmap
from prm_rl.tracking.heatmap import TokenHeatmap
from prm_rl.tracking.logger import truncate_metrics


@dataclass
class Groups:
    """Whole groups of K responses (contiguous) and what the step made of them."""

    rollout: Rollout
    scores: torch.Tensor  # [N] outcome scores
    kept: bool  # trained on this step; False: dropped by the filter
    process_rewards: torch.Tensor | None = None  # [N, T] the dense rewards the advantages came from (None: none)
    advantages: torch.Tensor | None = None  # [N, T]

    def first(self, n_groups: int, k: int) -> "Groups":
        """The first ``n_groups`` groups."""
        rows = torch.arange(min(n_groups * k, len(self.rollout)))
        return Groups(self.rollout.select(rows), self.scores[rows], self.kept,
                      *(None if x is None else x[rows] for x in (self.process_rewards, self.advantages)))


def table_groups(trained: Groups | None, dropped: Groups | None, wanted: int, k: int) -> list[Groups]:
    """The first groups of each that a table of ``wanted`` groups shows: half trained, half dropped where the
    step has enough of both (so that the filter's choice is on view), else the rest from whichever has more."""
    n_trained, n_dropped = (0 if g is None else len(g.rollout) // k for g in (trained, dropped))
    both = min(n_trained, n_dropped, wanted // 2)
    more_trained = min(n_trained - both, wanted - 2 * both)
    counts = (both + more_trained, both + min(n_dropped - both, wanted - 2 * both - more_trained))
    return [g.first(n, k) for g, n in zip((trained, dropped), counts) if n]


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no NaN (e.g. a fault-injected step's advantages)


def rollout_rows(step: int, groups: Groups, tokenizer,
                 step_end: torch.Tensor | None = None) -> list[tuple[dict, TokenHeatmap | None]]:
    """One (fields, heatmap) per response of ``groups``. ``step_end`` [N, T] bool (the tokens that close a
    step) asks for heatmaps of the process rewards, with each step's sum; without it, or without process
    rewards, the heatmap is None."""
    b, out = groups.rollout, []
    for i in range(len(b)):
        valid = b.response_mask[i].bool()
        ids = b.response_ids[i][valid]
        fields = {"step": step,
                  "prompt": tokenizer.decode(b.prompt_ids[i][b.prompt_mask[i].bool()], skip_special_tokens=True).strip(),
                  "response": tokenizer.decode(ids, skip_special_tokens=True),
                  "outcome_score": float(groups.scores[i]), "kept": groups.kept,
                  "process_reward": None, "advantage": None, "advantage_min": None, "advantage_max": None}
        # float64: the mean of a constant (an outcome-only advantage) is then that constant, as min and max are
        rewards = None if groups.process_rewards is None else groups.process_rewards[i][valid].double()
        adv = None if groups.advantages is None or not valid.any() else groups.advantages[i][valid].double()
        if rewards is not None:
            fields["process_reward"] = _number(float(rewards.sum()))
        if adv is not None:
            fields.update(advantage=_number(float(adv.mean())), advantage_min=_number(float(adv.min())),
                          advantage_max=_number(float(adv.max())))
        heat = None
        if step_end is not None and rewards is not None and valid.any():
            title = (f"outcome {fields['outcome_score']:.2f}  process reward {float(rewards.sum()):+.3f}"
                     + ("" if adv is None else f"  advantage {float(adv.mean()):+.3f}"))
            heat = heatmap.of_response(title, [tokenizer.decode([t]) for t in ids.tolist()], rewards,
                                       step_end[i][valid])
        out.append((fields, heat))
    return out


class RolloutsFile:
    """``RUN/rollouts.jsonl``: one JSON line per rollout, appended by rank 0 step by step while the file stays
    within ``max_mb``; the first step that would pass it is not written, and nothing after it (one log line).
    Opened at ``start_step``, lines of later steps go: a resumed run writes those steps again, as for
    metrics.jsonl."""

    def __init__(self, path: Path, max_mb: float, start_step: int, log: Callable[[str], None]):
        truncate_metrics(path, start_step)
        self.path, self.max_mb, self.log, self.full = path, max_mb, log, False

    def write(self, step: int, rows: list[dict]) -> None:
        if self.full:
            return
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        size = self.path.stat().st_size if self.path.exists() else 0
        if size + len(text) > self.max_mb * 1e6:
            self.full = True
            self.log(f"{self.path} would pass tracking.rollouts_jsonl_mb={self.max_mb:g} with step {step}'s "
                     f"rollouts: none are written from that step on")
            return
        with self.path.open("ab") as f:
            f.write(text)
