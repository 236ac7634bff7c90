"""Where the starting model comes from: the SFT model shipped with prm_rl, the cache, or a fresh SFT."""
from __future__ import annotations

import json
import shutil

from transformers import AutoModelForCausalLM

from prm_rl.cli.startup import compose
from prm_rl.models.loading import start_checkpoint, warm_start_spec
from prm_rl.models.warm_start import SHIPPED, cache_path, ensure_warm_start, shipped_path

# A spec small enough to train in seconds: the arithmetic task, a one-layer model, 3 SFT steps
TINY_SPEC = {"version": 1, "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
                                     "max_positions": 64},
             "task": {"min_steps": 1, "max_steps": 2, "max_operand": 20, "max_factor": 9, "max_value": 999},
             "warm_start": {"num_examples": 48, "max_steps": 3, "batch_size": 16, "learning_rate": 1e-3,
                            "lr_scheduler": "constant_with_warmup", "seed": 0},
             "heldout_seed": 1234, "heldout_size": 8}


def test_an_sft_trains_once_then_comes_from_the_cache(tmp_path):
    lines: list[str] = []
    path = ensure_warm_start(str(tmp_path), TINY_SPEC, log=lines.append)
    assert path == cache_path(str(tmp_path), TINY_SPEC) and "training one now" in lines[0]
    assert json.loads((path / "warm_start.json").read_text()) == TINY_SPEC
    assert AutoModelForCausalLM.from_pretrained(path).config.hidden_size == 16
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging folder left behind
    assert ensure_warm_start(str(tmp_path), TINY_SPEC, log=lines.append) == path
    assert lines[-1].startswith("warm start: using cached SFT model")


def test_the_main_job_starts_from_the_shipped_sft_without_training(tmp_path):
    cfg = compose([f"warm_start.cache_dir={tmp_path}"])
    lines: list[str] = []
    start = start_checkpoint(cfg, log=lines.append)
    assert start == str(shipped_path(warm_start_spec(cfg))) and start.startswith(str(SHIPPED))
    assert "shipped with prm_rl" in lines[0] and not any(tmp_path.iterdir())  # nothing trained, nothing cached
    assert AutoModelForCausalLM.from_pretrained(start).config.num_hidden_layers == cfg.model.tiny.num_layers


def test_shipped_false_takes_the_cache_and_another_config_is_not_the_shipped_one(tmp_path):
    cfg = compose([f"warm_start.cache_dir={tmp_path}", "warm_start.shipped=false"])
    own = cache_path(str(tmp_path), warm_start_spec(cfg))
    shutil.copytree(shipped_path(warm_start_spec(cfg)), own)  # stands for an SFT trained on this machine
    assert start_checkpoint(cfg, log=lambda _: None) == str(own)
    other = compose(["warm_start.seed=1"])
    assert shipped_path(warm_start_spec(other)) is None  # trained (or cached) as before


def test_a_shipped_folder_whose_recorded_spec_differs_is_not_used(tmp_path, monkeypatch):
    """The folder name is a hash; the recorded spec is what is checked (a renamed or stale folder is ignored)."""
    folder = cache_path(str(tmp_path), TINY_SPEC)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "warm_start.json").write_text(json.dumps({**TINY_SPEC, "heldout_size": 9}))
    monkeypatch.setattr("prm_rl.models.warm_start.SHIPPED", tmp_path)
    assert shipped_path(TINY_SPEC) is None
    (folder / "warm_start.json").write_text(json.dumps(TINY_SPEC))
    assert shipped_path(TINY_SPEC) == folder
