"""Prompts from a Hugging Face Hub dataset id (``data.train=openai/gsm8k``), read offline from the cache a Hub
download leaves: ``datasets``' prepared Arrow files under ``HF_DATASETS_CACHE/openai___gsm8k/main/0.0.0/HASH/``
(the suite's own empty Hugging Face home, tests/conftest.py; HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import os
from dataclasses import replace

import pandas as pd
import pytest

from prm_rl.config import ConfigError, DataSection
from prm_rl.data.files import DataError, file_splits, is_hub_id, load_prompts
from prm_rl.models.tiny import build_char_tokenizer

GSM8K_ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"} for i in range(8)]


@pytest.fixture(scope="module")
def cached_gsm8k(tmp_path_factory) -> str:
    """openai/gsm8k, config main, splits train (5 rows) and test (3), prepared by datasets' own Parquet builder and
    placed where load_dataset("openai/gsm8k", "main") leaves it (the namespace folder, the Hub config's name)."""
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = tmp_path_factory.mktemp("hub_files")
    pd.DataFrame(GSM8K_ROWS[:5]).to_parquet(files / "train.parquet")
    pd.DataFrame(GSM8K_ROWS[5:]).to_parquet(files / "test.parquet")
    cache = datasets.config.HF_DATASETS_CACHE
    builder = Parquet(cache_dir=str(cache), dataset_name="gsm8k", config_name="main", hash="0123456789abcdef",
                      data_files={"train": [str(files / "train.parquet")], "test": [str(files / "test.parquet")]})
    builder.download_and_prepare()
    os.renames(builder.cache_dir, os.path.join(cache, "openai___gsm8k", "main", "0.0.0", "0123456789abcdef"))
    return "openai/gsm8k"


def test_a_hub_id_reads_its_split_from_the_cache_offline(cached_gsm8k):
    loaded = load_prompts(cached_gsm8k, config="main", split="test", mapping="gsm8k")
    assert loaded.rows == 3 and [s.prompt for s in loaded.samples] == [r["question"] + "\n" for r in GSM8K_ROWS[5:]]
    assert [s.fields["answer"] for s in loaded.samples] == ["10", "12", "14"] and {s.task for s in loaded.samples} == {"math"}


def test_train_and_eval_from_two_splits_of_one_hub_dataset(cached_gsm8k):
    data = DataSection(train=cached_gsm8k, eval=cached_gsm8k, config="main", eval_split="test", mapping="gsm8k")
    splits, counts = file_splits(data, build_char_tokenizer("0123456789+-*=?\n Whatisplu"))
    assert (len(splits.train), len(splits.eval), counts["train_rows"], counts["eval_rows"]) == (5, 3, 5, 3)
    with pytest.raises(DataError, match=r"the same rows as data\.train \(split train of both\)"):
        file_splits(replace(data, eval_split=None), None)


def test_a_missing_hub_dataset_or_split_is_one_line_naming_it(cached_gsm8k):
    with pytest.raises(DataError) as missing:
        load_prompts("nobody/no-such-dataset", mapping="gsm8k")
    assert str(missing.value).startswith("nobody/no-such-dataset: no such file or directory, and not loadable as a "
                                         "Hugging Face Hub dataset (config None, split train: ")
    with pytest.raises(DataError) as split:
        load_prompts(cached_gsm8k, config="main", split="validation", mapping="gsm8k")
    assert "split validation" in str(split.value) and "Unknown split" in str(split.value)
    assert "\n" not in str(missing.value) + str(split.value)


def test_what_reads_as_a_hub_id(tmp_path):
    assert is_hub_id("openai/gsm8k") and is_hub_id("gsm8k") and is_hub_id("AI-MO/NuminaMath-CoT")
    assert not is_hub_id("data/train.jsonl") and not is_hub_id("/abs/dir") and not is_hub_id("a/b/c")
    (tmp_path / "org").mkdir()
    assert not is_hub_id(str(tmp_path / "org"))  # an existing path is read as a path
    DataSection(train="openai/gsm8k").check()  # accepted by the config; loaded (or refused) by the run
    with pytest.raises(ConfigError, match=r"data\.train=no/such\.jsonl: no such file or directory"):
        DataSection(train="no/such.jsonl").check()
