"""Outcome-labelled responses, the implicit PRM's whole training set (``launch/train_prm.py``).

A row is a rendered prompt (the exact text the model saw, as :class:`~prm_rl.data.sample.Sample` holds it), one
response to it, and its outcome label in [0, 1] (true/false count as 1/0). Rows are grouped by prompt text,
in order of first appearance: the dpo loss pairs responses within a group, and an optimiser step takes whole
groups. Read from JSONL, Parquet or a ``datasets`` directory (the format by extension, split ``train`` of a
DatasetDict), with the keys ``prompt``, ``response``, ``label`` or those ``prm_train.fields`` names; a bad row
is one :class:`~prm_rl.data.files.DataError` line naming the file, the row and the key. ``rows.jsonl`` of a
sampling run (``prm_train.data=null``) has this layout, so it can train another PRM as it is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from prm_rl.data import mappings
from prm_rl.data.files import DataError, file_rows
from prm_rl.data.mappings import RowError

KEYS = ("prompt", "response", "label")


@dataclass
class LabelledRows:
    """Rows grouped by prompt: group g is rows ``g*k .. g*k+k-1`` when every prompt has k responses."""

    prompts: list[str]  # [N] rendered prompt of each row
    responses: list[str]  # [N]
    labels: torch.Tensor  # [N] float in [0, 1]
    group_size: int  # k: responses per prompt; 1 when prompts have different numbers of responses

    @property
    def num_groups(self) -> int:
        return len(self.responses) // self.group_size

    def write_jsonl(self, path: Path) -> None:
        """The rows in this module's layout, written atomically (readable as ``prm_train.data``)."""
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for prompt, response, label in zip(self.prompts, self.responses, self.labels.tolist()):
                f.write(json.dumps({"prompt": prompt, "response": response, "label": label}) + "\n")
        tmp.replace(path)


def _label(row: dict, key: str) -> float:
    value = mappings.get(row, key)
    if isinstance(value, bool) or (isinstance(value, (int, float)) and 0 <= value <= 1):
        return float(value)
    raise RowError(key, f"expected a label in [0, 1] (or true/false), got {value!r}")


def load_labelled(path: str, fields: dict[str, str], *, needs_groups: bool) -> LabelledRows:
    """Read, check and group the rows of ``path``. ``needs_groups``: every prompt must have the same number
    (at least 2) of responses, as the dpo loss pairs them within a prompt."""
    keys = {key: fields.get(key, key) for key in KEYS}
    grouped: dict[str, list[tuple[str, float]]] = {}
    for where, row in file_rows(path, "auto", "train"):
        try:
            prompt, response = mappings.get_str(row, keys["prompt"]), mappings.get_str(row, keys["response"])
            label = _label(row, keys["label"])
        except RowError as err:
            raise DataError(f"{where}: {err} (prm_train.fields maps prompt, response, label)") from None
        grouped.setdefault(prompt, []).append((response, label))
    if not grouped:
        raise DataError(f"{path}: no rows")
    sizes = {len(v) for v in grouped.values()}
    k = sizes.pop() if len(sizes) == 1 else 1
    if needs_groups and k < 2:
        counts = sorted({len(v) for v in grouped.values()})
        raise DataError(f"{path}: prompts have {', '.join(map(str, counts))} responses each; prm.loss=dpo pairs "
                        "responses to one prompt, so every prompt needs the same number, at least 2 (or use "
                        "prm.loss=ce)")
    prompts = [p for p, group in grouped.items() for _ in group]
    responses = [r for group in grouped.values() for r, _ in group]
    labels = torch.tensor([label for group in grouped.values() for _, label in group], dtype=torch.float32)
    return LabelledRows(prompts, responses, labels, k)
