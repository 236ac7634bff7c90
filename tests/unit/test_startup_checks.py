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
from prm_rl.cli import main as prm_rl_command
from prm_rl.cli.startup import compose as compose_run, hydra_error_line, with_user_recipes
from prm_rl.config import RECIPES, ModelSection
from prm_rl.errors import ConfigError
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
    lines = {}
    for override in ("foo=1", "+recipe=nope", "trainer.max_steps=abc"):
        with pytest.raises(Exception) as err, initialize_config_dir(str(RECIPES), version_base=None):
            compose("base", overrides=[override])
        lines[override] = hydra_error_line(err.value)
    assert lines["foo=1"] == "Could not override 'foo'; Key 'foo' not in 'Config'; To append to your config use +foo=1"
    assert lines["+recipe=nope"].startswith("In 'base': Could not find 'recipe/nope'; Available options in 'recipe': ")
    assert "math_ppo, math_ppo_paper, math_rloo" in lines["+recipe=nope"] and "search path" not in lines["+recipe=nope"]
    assert lines["trainer.max_steps=abc"] == ("Error merging override trainer.max_steps=abc; Value 'abc' of type 'str' "
                                              "could not be converted to Integer")


# ---------------------------------------------------------------------------- the user's recipes, prm-rl
MY_TASK = "# @package _global_\ndefaults:\n  - math_ppo\ntrainer:\n  max_steps: 2\n"


def test_a_recipe_in_the_users_folder_extends_a_built_in_one(tmp_path, monkeypatch):
    (tmp_path / "mine" / "recipe").mkdir(parents=True)
    (tmp_path / "mine" / "recipe" / "my_task.yaml").write_text(MY_TASK)
    monkeypatch.chdir(tmp_path)  # a relative folder is the user's project's
    cfg = compose_run(["+recipe=my_task"], config_dir=Path("mine"))
    assert cfg.trainer.max_steps == 2 and cfg.rollout.prompts_per_step == 32  # its own value, then math_ppo's
    path = f"hydra.searchpath=['file://{tmp_path / 'mine'}']"  # first: Hydra's own flags may end the command
    for flag in (["--config-dir", "mine"], ["-cd", "mine"], ["--config-dir=mine"]):
        assert with_user_recipes(["+recipe=my_task", *flag, "--cfg", "job"]) == [path, "+recipe=my_task", "--cfg",
                                                                                   "job"]
    assert with_user_recipes(["+recipe=math_ppo"]) == ["+recipe=math_ppo"]


@pytest.mark.parametrize("make, args, message", [
    ((), ["--config-dir"], "--config-dir: needs a folder"),
    ((), ["-cd", "nowhere"], "--config-dir nowhere: no such directory"),
    (("my_task.yaml",), ["--config-dir", "."], "--config-dir .: no recipe/*.yaml in it"),
    (("recipe/math_ppo.yaml",), ["--config-dir=."], "--config-dir .: recipe/math_ppo.yaml has a built-in recipe's"),
])
def test_a_bad_recipe_folder_is_one_line_naming_the_flag(tmp_path, monkeypatch, make, args, message):
    monkeypatch.chdir(tmp_path)
    for name in make:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(MY_TASK)
    with pytest.raises(ConfigError) as err:
        with_user_recipes(["+recipe=my_task", *args])
    assert err.value.one_line().startswith(f"config error: {message}") and "\n" not in err.value.one_line()


def test_the_console_command_lists_its_commands_and_refuses_an_unknown_one(capsys):
    assert prm_rl_command.main([]) == 0
    listed = capsys.readouterr().out
    for name in ("train", "train-prm", "estimate", "eval-prm", "best-of-n", "mc-values", "prm-score", "verify"):
        assert f"\n  {name} " in listed
    assert prm_rl_command.main(["--local_rank=0", "trian"]) == 2  # deepspeed's flag, before the command, is dropped
    assert capsys.readouterr().err == ("error: prm-rl trian: no such command (one of train, train-prm, estimate, "
                                       "eval-prm, best-of-n, mc-values, prm-score, verify)\n")
    with pytest.raises(SystemExit) as stop:
        prm_rl_command.main(["verify", "--workers", "0"])  # the tool's own parser, on the rest
    assert stop.value.code == 2 and "--workers" in capsys.readouterr().err


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
