"""Groups that passed the filter, waiting to be trained on.

With ``filter.fill_rounds > 1`` a step samples new prompts until it holds ``rollout.prompts_per_step`` kept
groups (or runs out of rounds); groups beyond that carry over to the next step, as in the authors' code.
Carried groups were sampled by an earlier policy; their old log-probs are recomputed under the current one.
"""
from __future__ import annotations

import torch

from prm_rl.rollout.generate import Rollout, concat_rollouts


class GroupBuffer:
    def __init__(self, group_size: int, pad_id: int):
        self.k, self.pad_id = group_size, pad_id
        self.rollout: Rollout | None = None
        self.scores = torch.zeros(0)

    def __len__(self) -> int:
        """Number of whole groups held."""
        return 0 if self.rollout is None else len(self.rollout) // self.k

    def add(self, rollout: Rollout, scores: torch.Tensor) -> None:
        if len(rollout) == 0:
            return
        self.rollout = rollout if self.rollout is None else concat_rollouts([self.rollout, rollout], self.pad_id)
        self.scores = torch.cat([self.scores, scores])

    def take(self, n_groups: int) -> tuple[Rollout, torch.Tensor]:
        """The oldest ``n_groups`` groups (or all held); the rest stay."""
        rows = min(n_groups, len(self)) * self.k
        taken, scores = self.rollout.select(torch.arange(rows)), self.scores[:rows]
        rest = torch.arange(rows, len(self.rollout))
        self.rollout = self.rollout.select(rest) if rest.numel() else None
        self.scores = self.scores[rows:]
        return taken, scores

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the held groups (tensors) and their scores."""
        rollout = None if self.rollout is None else {f: getattr(self.rollout, f) for f in Rollout.__dataclass_fields__}
        return {"rollout": rollout, "scores": self.scores}

    def load_state_dict(self, state: dict) -> None:
        self.rollout = None if state["rollout"] is None else Rollout(**state["rollout"])
        self.scores = state["scores"]
