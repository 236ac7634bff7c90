"""Start-up checks that need no trainer: what model.path names, Hydra's errors as one line, the run lock."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from prm_rl import json_text
from prm_rl.cli.startup import hydra_error_line
from prm_rl.config import ModelSection
from prm_rl.models.loading import ModelSourceError, check_model_source
from prm_rl.data import arithmetic
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model
from prm_rl.trainer import run_lock


def model_section(path, tokenizer_path=None) -> ModelSection:
    return ModelSection(path=None if path is None else str(path), tokenizer_path=tokenizer_path,
                        tiny=TinyModelConfig(), dtype="float32", gradient_checkpointing=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                     tokenizer, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_saved_checkpoint_passes(checkpoint):
    check_model_source(model_section(checkpoint))
    check_model_source(model_section(None, tokenizer_path=str(checkpoint)))


@pytest.mark.parametrize("keep, message", [
    ((), "not a Hugging Face checkpoint (no config.json)"),
    (("config.json",), "no weights (*.safetensors or pytorch_model*.bin)"),
    (("config.json", "model.safetensors"), "no tokenizer (tokenizer.json, tokenizer.model, vocab.json, "
                                           "tokenizer_config.json); set model.tokenizer_path if it is elsewhere"),
])
def test_a_directory_missing_parts_is_named(tmp_path, checkpoint, keep, message):
    for name in keep:
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    with pytest.raises(ModelSourceError, match="^" + re.escape(f"model.path={tmp_path}: {message}") + "$"):
        check_model_source(model_section(tmp_path))


def test_paths_that_cannot_be_hub_ids_are_missing_directories(tmp_path):
    for value in ("/no/such/ckpt", "./ckpt", "~/no-such-ckpt", "runs/a/policy"):
        with pytest.raises(ModelSourceError, match=f"^model.path={value}: no such directory$"):
            check_model_source(model_section(value))
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelSourceError, match="a file; expected a checkpoint directory"):
        check_model_source(model_section(tmp_path / "weights.bin"))


def test_an_absent_relative_path_shaped_like_a_hub_id_is_looked_up_once(monkeypatch, tmp_path):
    """``ckpt/my-sft`` could be a Hub id: not in the cache, and the Hub is asked once (offline: not at all)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    # online, whatever the caller's HF_HUB_OFFLINE says (huggingface_hub reads it once, at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    expected = (re.escape(f"model.path=ckpt/my-sft: no such directory (relative to {tmp_path}), ")
                + "(nor a model id on the Hugging Face Hub|and the Hugging Face Hub cannot be reached)")
    with pytest.raises(ModelSourceError, match="^" + expected):
        check_model_source(model_section("ckpt/my-sft"))

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError, match="nor a Hub model in the local cache \\(offline mode is on\\)$"):
        check_model_source(model_section("ckpt/my-sft"))


def test_hydra_errors_become_one_line():
    from hydra import compose, initialize_config_dir
    from prm_rl.config import register_schema

    register_schema()
    repo = Path(__file__).resolve().parents[2]
    lines = {}
    for override in ("foo=1", "+recipe=nope", "trainer.max_steps=abc"):
        with pytest.raises(Exception) as err, initialize_config_dir(str(repo / "recipes"), version_base=None):
            compose("base", overrides=[override])
        lines[override] = hydra_error_line(err.value)
    assert lines["foo=1"] == "Could not override 'foo'; Key 'foo' not in 'Config'; To append to your config use +foo=1"
    assert lines["+recipe=nope"].startswith("In 'base': Could not find 'recipe/nope'; Available options in 'recipe': ")
    assert "math_ppo, math_ppo_paper, math_rloo" in lines["+recipe=nope"] and "search path" not in lines["+recipe=nope"]
    assert lines["trainer.max_steps=abc"] == ("Error merging override trainer.max_steps=abc; Value 'abc' of type 'str' "
                                              "could not be converted to Integer")


def test_json_nested_too_deeply_is_a_value_error():
    assert json_text.loads("[[1]]") == [[1]]
    with pytest.raises(ValueError, match="nested too deeply to read"):
        json_text.loads("[" * 100_000 + "]" * 100_000)


# ------------------------------------------------------------------------------------------------ run lock
HOLD = """
import sys, time
from pathlib import Path
from prm_rl.trainer import run_lock
run_lock.acquire(Path(sys.argv[1]), print)
print("held", flush=True)
time.sleep(60)
"""


def test_a_live_holder_is_named_and_a_dead_one_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunDirInUse, match=f"another run is using this directory \\(pid {holder.pid} "
                                                       f"on host {socket.gethostname()}, started "):
            run_lock.acquire(tmp_path, print)
    finally:
        holder.kill()  # as kill -9 would: the kernel drops the flock, the owner text stays
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
    seen = []
    lock = run_lock.acquire(tmp_path, seen.append)
    assert len(seen) == 1 and seen[0].startswith(f"run directory: took over the lock of a run that is gone "
                                                 f"(pid {holder.pid} on host {socket.gethostname()}, started ")
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / ".lock").read_text() == ""  # a clean exit leaves no owner: the next start is no takeover
    seen.clear()
    run_lock.acquire(tmp_path, seen.append).release()
    assert seen == []


def test_a_holder_on_another_host_is_not_taken_over(tmp_path):
    owner = {"pid": 1, "host": "node-7", "started": "2026-11-30 10:00:00 UTC", "process_start": None, "command": "x"}
    (tmp_path / ".lock").write_text(json.dumps(owner))
    with pytest.raises(run_lock.RunDirInUse, match="owned by a run on another host \\(pid 1 on host node-7, "
                                                   f"started 2026-11-30 10:00:00 UTC\\).*delete {tmp_path}/.lock"):
        run_lock.acquire(tmp_path, print)


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    """The owner's pid now belongs to another process (this one, started later): a dead owner, taken over."""
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "started": "x", "process_start": "1", "command": "x"}
    (tmp_path / ".lock").write_text(json.dumps(owner))
    seen = []
    run_lock.acquire(tmp_path, seen.append).release()
    assert len(seen) == 1 and "took over" in seen[0]


@pytest.mark.parametrize("text", ["not json at all", '{"pid": "x", "host": 3, "started": "", "process_start": null, '
                                                     '"command": ""}'])
def test_an_unreadable_owner_is_taken_over(tmp_path, text):
    (tmp_path / ".lock").write_text(text)
    seen = []
    run_lock.acquire(tmp_path, seen.append).release()
    assert len(seen) == 1 and "took over the lock of a run that is gone (pid -1" in seen[0]
