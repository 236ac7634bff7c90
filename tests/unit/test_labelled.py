"""Outcome-labelled rows for launch/train_prm.py: keys, labels, grouping by prompt, one-line errors."""
from __future__ import annotations

import json

import pytest

from prm_rl.data.files import DataError
from prm_rl.data.labelled import LabelledRows, load_labelled


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rows_are_grouped_by_prompt_in_order_of_first_appearance(tmp_path):
    path = write(tmp_path / "rows.jsonl", [
        {"prompt": "a", "response": "1", "label": 1}, {"prompt": "b", "response": "2", "label": False},
        {"prompt": "a", "response": "3", "label": 0.5}, {"prompt": "b", "response": "4", "label": True}])
    rows = load_labelled(path, {}, needs_groups=True)
    assert rows.prompts == ["a", "a", "b", "b"] and rows.responses == ["1", "3", "2", "4"]
    assert rows.labels.tolist() == [1.0, 0.5, 0.0, 1.0] and rows.group_size == 2 and rows.num_groups == 2


def test_uneven_groups_train_with_ce_only(tmp_path):
    path = write(tmp_path / "rows.jsonl", [
        {"prompt": "a", "response": "1", "label": 1}, {"prompt": "a", "response": "2", "label": 0},
        {"prompt": "b", "response": "3", "label": 1}])
    assert load_labelled(path, {}, needs_groups=False).group_size == 1
    with pytest.raises(DataError, match=r"prompts have 1, 2 responses each; prm.loss=dpo"):
        load_labelled(path, {}, needs_groups=True)


def test_mapped_keys_and_a_bad_label_name_the_row(tmp_path):
    path = write(tmp_path / "rows.jsonl", [{"q": {"text": "a"}, "out": "1", "ok": 1},
                                           {"q": {"text": "a"}, "out": "2", "ok": "yes"}])
    fields = {"prompt": "q.text", "response": "out", "label": "ok"}
    with pytest.raises(DataError, match=r"rows.jsonl: row 2: field 'ok': expected a label in \[0, 1\]"):
        load_labelled(path, fields, needs_groups=False)
    with pytest.raises(DataError, match=r"row 1: field 'response': missing"):
        load_labelled(path, {"prompt": "q.text"}, needs_groups=False)


def test_written_rows_read_back_the_same(tmp_path):
    import torch

    rows = LabelledRows(["p", "p"], ["x", "y"], torch.tensor([1.0, 0.0]), 2)
    rows.write_jsonl(tmp_path / "rows.jsonl")
    back = load_labelled(str(tmp_path / "rows.jsonl"), {}, needs_groups=True)
    assert (back.prompts, back.responses, back.labels.tolist()) == (rows.prompts, rows.responses, [1.0, 0.0])
