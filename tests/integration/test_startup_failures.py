"""A user's mistakes at start-up, with real processes: each ends in one line and its exit code (prm_rl/cli/startup.py),
printed once however many ranks, and changes nothing a run already wrote."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_runs import (REPO, STARTUP_ABORT, environment, launch, metrics, run_retrying_startup_abort, start, wait_for,
                       wait_until_gone)

FIXTURES = REPO / "tests" / "data" / "fixtures"


def stderr_lines(proc) -> list[str]:
    """stderr without DeepSpeed's accelerator notice and the launcher's own bookkeeping lines."""
    return [line for line in proc.stderr.strip().splitlines()
            if "real_accelerator" not in line and "[launch.py]" not in line and "[runner.py]" not in line]


# Not the shipped SFT model: with an empty warm_start.cache_dir, reaching the warm start would mean minutes of SFT,
# which is how these tests show that a check comes before it.
OWN_WARM_START = "warm_start.shipped=false"


def train_py(*overrides: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """One plain ``python launch/train.py`` process (retried once on DeepSpeed's rare start-up abort, tiny_runs)."""
    return run_retrying_startup_abort([sys.executable, str(REPO / "launch" / "train.py"), "+recipe=math_ppo",
                                       "wandb.mode=disabled", OWN_WARM_START, *overrides], environment(), timeout,
                                      cwd=cwd)


@pytest.mark.parametrize("override, line", [
    ("trainer.max_step=3", "config error: Could not override 'trainer.max_step'; Key 'max_step' not in "
                           "'TrainerSection'; To append to your config use +trainer.max_step=3"),
    ("trainer.max_steps=ten", "config error: Error merging override trainer.max_steps=ten; Value 'ten' of type 'str' "
                              "could not be converted to Integer"),
    ("trainer.max_steps", "config error: Error parsing override 'trainer.max_steps'; missing EQUAL at '<EOF>'"),
])
def test_a_bad_override_is_one_line_and_exit_2(tmp_path, override, line):
    proc = train_py(override, f"trainer.output_dir={tmp_path / 'run'}")
    assert (proc.returncode, stderr_lines(proc)) == (2, [line])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["filter.low=2", "trainer.max_steps=ten"])
def test_with_two_ranks_a_config_error_is_printed_once(tmp_path, override):
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
           str(29400 + os.getpid() % 100), "launch/train.py", "+recipe=math_ppo", override,
           f"trainer.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in stderr_lines(proc) + proc.stdout.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1, proc.stderr[-3000:]


@pytest.mark.parametrize("make, value, message", [
    (None, "ckpt/my-sft", "no such directory (relative to "),  # a relative path is not a Hub id to retry for 50 s
    ("empty", None, "not a Hugging Face checkpoint (no config.json)"),
    ("config only", None, "no weights (*.safetensors or pytorch_model*.bin)"),
])
def test_a_model_path_that_cannot_load_is_one_line_before_any_model_loads(tmp_path, make, value, message):
    if make is not None:
        value = str(tmp_path / "sft")
        (tmp_path / "sft").mkdir()
        if make == "config only":
            (tmp_path / "sft" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = train_py(f"model.path={value}", f"data.train={FIXTURES / 'math.jsonl'}", "data.mapping=math",
                    f"trainer.output_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(f"model error: model.path={value}: {message}"), lines
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_prompts_the_tokenizer_cannot_encode_are_refused_before_the_warm_start(tmp_path):
    """GSM8K word problems with the built-in model's character tokenizer: mostly <unk>, refused before models load
    and before the warm start (an empty cache and not the shipped model: reaching it would mean minutes of SFT)."""
    cache = tmp_path / "cache"
    proc = train_py(f"data.train={FIXTURES / 'gsm8k.jsonl'}", "data.mapping=gsm8k", f"warm_start.cache_dir={cache}",
                    f"trainer.output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert stderr_lines(proc) == [f"data error: {FIXTURES / 'gsm8k.jsonl'}: 2 of 2 prompts hold characters the "
                                  "tokenizer cannot encode (<unk>), e.g. row 1 (81 of 94 tokens); use the tokenizer "
                                  "these prompts are written for (model.path or model.tokenizer_path)"]
    assert "warm start" not in proc.stdout and not cache.exists()
    assert not (tmp_path / "run" / "config.yaml").exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_a_second_start_on_a_live_run_directory_is_refused(tmp_path, warm_cache):
    """Two real runs on one directory. The first takes over a stale lock (a killed run's, pid gone) and
    trains; the second, started meanwhile with two ranks, is refused at once naming the first; the first trains
    on as if alone until it is stopped (SIGTERM: a checkpoint, then exit 3)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = _dead_pid()
    stale = {"pid": dead, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC", "process_start": "0",
             "command": "killed run"}
    (run_dir / ".lock").write_text(json.dumps(stale))
    overrides = ["trainer.max_steps=1000", "trainer.checkpoint_every=0", "wandb.mode=disabled"]
    first = start(warm_cache, run_dir, overrides, tmp_path / "first.log", num_ranks=1)
    try:
        owner = {}

        def owned() -> bool:
            text = (run_dir / ".lock").read_text().strip()
            owner.update(json.loads(text) if text else {})
            return owner.get("pid", dead) != dead

        wait_for(owned, first, timeout=900)
        started = time.time()
        second = launch(warm_cache, run_dir, ["trainer.max_steps=8", "wandb.mode=disabled"], num_ranks=2,
                        port_offset=1)
        refused_in = time.time() - started
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        wait_for(lambda: len(metrics(run_dir)) >= 2, first)  # it trains on
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)
        wait_until_gone(first.pid, timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert second.returncode == 2, second.stdout[-3000:] + second.stderr[-3000:]
    refusals = [line for line in stderr_lines(second) if line.startswith("run directory in use:")]
    assert refusals == [f"run directory in use: {run_dir}: another run is using this directory (pid {owner['pid']} on "
                        f"host {socket.gethostname()}, started {owner['started']}); wait for it to end, stop it, or "
                        "set trainer.output_dir to another directory"], second.stderr[-3000:]
    assert "evaluating the starting policy" not in second.stdout, f"refused only after {refused_in:.0f} s"
    log = (tmp_path / "first.log").read_text()
    assert (f"took over the lock of a run that is gone (pid {dead} on host {socket.gethostname()}, started "
            "2026-01-01 00:00:00 UTC)") in log
    assert "stopped by SIGTERM" in log
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == list(range(1, len(steps) + 1))  # each step once, in order: only the first run wrote
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [f"step_{len(steps):06d}"]
    assert (run_dir / ".lock").read_text() == ""  # released at exit


def _sigint_as_in_a_terminal() -> None:
    """A suite started in the background (``make test &``, nohup) passes SIGINT down ignored, and Python then
    installs no KeyboardInterrupt handler; a terminal's foreground job has the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C during the warm start (a fresh cache: SFT runs in a child process), sent to the process group as a
    terminal does: one line, exit 130, no traceback from the trainer or its child, no half-written cache."""
    for attempt in range(3):  # DeepSpeed's rare abort of a rank at exit (tiny_runs.STARTUP_ABORT): try again
        cache, run_dir = tmp_path / f"try{attempt}" / "cache", tmp_path / f"try{attempt}" / "run"
        proc = subprocess.Popen([sys.executable, "launch/train.py", "+recipe=math_ppo", "wandb.mode=disabled",
                                 OWN_WARM_START, f"warm_start.cache_dir={cache}", f"trainer.output_dir={run_dir}"],
                                cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True, preexec_fn=_sigint_as_in_a_terminal)
        try:
            wait_for(lambda: any(p.name.count(".tmp-") for p in cache.glob("*")), proc, timeout=300)  # SFT began
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if STARTUP_ABORT not in err:
            break
    lines = [line for line in err.strip().splitlines() if "real_accelerator" not in line]
    assert proc.returncode == 130, err[-3000:]
    assert lines == ["[prm_rl] interrupted (Ctrl-C); nothing saved since the last checkpoint"], err[-3000:]
    assert not list(cache.glob("*/config.json")), "an interrupted warm start was cached as complete"
    assert not (run_dir / "config.yaml").exists() and (run_dir / ".lock").read_text() == ""


def test_a_missing_prm_init_path_is_one_line(tmp_path):
    proc = train_py(f"prm.init_path={tmp_path / 'no-prm'}", f"trainer.output_dir={tmp_path / 'run'}",
                    f"warm_start.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert stderr_lines(proc) == [f"model error: prm.init_path={tmp_path / 'no-prm'}: no such directory"]


@pytest.mark.parametrize("option, message", [
    ("+verifier.tasks.chess={verifier: chessy}",
     "config error: verifier.tasks.chess.verifier='chessy': must be one of"),
    ("+verifier.tasks.chess={_target_: no_such_module.fn}",
     "config error: verifier.tasks.chess._target_='no_such_module.fn': cannot import"),
])
def test_verifier_option_error_is_one_line_naming_the_config_path(tmp_path, option, message):
    """Checked before the warm start (none is cached here, so reaching it would take minutes)."""
    proc = train_py(option, f"warm_start.cache_dir={tmp_path / 'empty'}", f"trainer.output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "warm start" not in proc.stdout


def test_a_lora_target_the_model_lacks_is_one_line_before_the_warm_start(tmp_path):
    proc = train_py("model.lora.r=8", "model.lora.target_modules=[q_proj,c_attn]",
                    f"warm_start.cache_dir={tmp_path / 'empty'}", f"trainer.output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert stderr_lines(proc) == ["config error: model.lora.target_modules=['q_proj', 'c_attn']: the model has no "
                                  "module 'c_attn' (its linear layers: down_proj, gate_proj, k_proj, lm_head, o_proj, "
                                  "q_proj, up_proj, v_proj)"]
    assert "warm start" not in proc.stdout


def test_unwritable_output_dir_fails_before_loading_models():
    proc = train_py("trainer.output_dir=/proc/prm_rl_run")
    assert proc.returncode == 5, proc.stderr[-2000:]
    assert stderr_lines(proc)[-1].startswith("[prm_rl] trainer.output_dir=/proc/prm_rl_run: cannot write")
