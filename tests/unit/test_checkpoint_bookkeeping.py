"""Checkpoint bookkeeping without models: which checkpoint resume picks, what it refuses, leftovers of an
interrupted save, metrics truncation, the NaN guard's counting, signal handling, buffer state."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from omegaconf import OmegaConf

from prm_rl.rollout.generate import Rollout
from prm_rl.tracking.logger import truncate_metrics
from prm_rl.trainer import checkpoint
from prm_rl.trainer.buffer import GroupBuffer
from prm_rl.trainer.faults import NonFiniteGuard, RunStopped, StopSignals


def make_checkpoint(run_dir, step, complete=True):
    path = run_dir / "checkpoints" / (f"step_{step:06d}" + ("" if complete else ".tmp"))
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    return path


def test_auto_resumes_from_the_newest_complete_checkpoint_and_drops_leftovers(tmp_path):
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    leftover = make_checkpoint(tmp_path, 12, complete=False)
    (tmp_path / "checkpoints" / "step_000011").mkdir()  # no trainer_state.json: never complete
    logged = []
    assert checkpoint.find_resume_point(tmp_path, "auto", logged.append).name == "step_000010"
    assert not leftover.exists() and "ignoring incomplete checkpoint" in logged[0]


def test_auto_without_checkpoints_starts_fresh(tmp_path):
    assert checkpoint.find_resume_point(tmp_path, "auto", print) is None


def test_never_refuses_to_overwrite_an_earlier_run(tmp_path):
    make_checkpoint(tmp_path, 3)
    with pytest.raises(RunStopped, match="trainer.resume=never, but .* already holds checkpoints"):
        checkpoint.find_resume_point(tmp_path, "never", print)


def test_an_explicit_path_must_be_a_complete_checkpoint(tmp_path):
    good = make_checkpoint(tmp_path, 4)
    assert checkpoint.find_resume_point(tmp_path, str(good), print) == good.resolve()
    broken = make_checkpoint(tmp_path, 6, complete=False)
    with pytest.raises(RunStopped, match="not a complete checkpoint"):
        checkpoint.find_resume_point(tmp_path / "elsewhere", str(broken), print)


def test_config_changes_name_each_differing_key(tmp_path):
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"trainer": {"max_steps": 10, "seed": 0}}))
    changes = checkpoint.config_changes(tmp_path, OmegaConf.create({"trainer": {"max_steps": 20, "seed": 0}}))
    assert changes == ["trainer.max_steps: 10 -> 20"]


def test_metrics_are_cut_back_to_the_checkpoint_step_and_a_torn_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 8)) + '{"step": 8, "x"')
    truncate_metrics(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_guard_counts_bad_steps_in_a_row_and_resets_on_a_good_one():
    guard = NonFiniteGuard(max_bad_steps=2)
    assert guard.update(1.0)["guard/bad_steps_in_a_row"] == 1 and not guard.exhausted
    assert guard.update(0.0)["guard/bad_steps_in_a_row"] == 0
    guard.update(2.0)
    metrics = guard.update(1.0)
    assert guard.exhausted and metrics["guard/bad_steps_total"] == 3


def test_first_signal_requests_a_stop_and_a_repeated_sigterm_is_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher forwarding the same request: still alive
        assert signals.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_buffer_state_round_trips():
    k = 2
    rollout = Rollout(torch.arange(8).view(4, 2), torch.ones(4, 2, dtype=torch.long), torch.arange(12).view(4, 3),
                      torch.ones(4, 3, dtype=torch.long), torch.tensor([False, True, False, False]),
                      sampler_logp=-torch.rand(4, 3))  # as the vllm engine leaves it
    buffer = GroupBuffer(k, pad_id=0)
    buffer.add(rollout, torch.tensor([1.0, 0.0, 0.5, 0.5]))
    restored = GroupBuffer(k, pad_id=0)
    restored.load_state_dict(buffer.state_dict())
    (a, sa), (b, sb) = buffer.take(2), restored.take(2)
    assert torch.equal(sa, sb) and all(torch.equal(getattr(a, f), getattr(b, f)) for f in Rollout.__dataclass_fields__)
    empty = GroupBuffer(k, pad_id=0)
    empty.load_state_dict(GroupBuffer(k, pad_id=0).state_dict())
    assert len(empty) == 0


def test_an_exported_models_card_says_what_it_is_what_it_learned_from_and_its_held_out_figures():
    from prm_rl.config import RECIPES
    from prm_rl.trainer.run_dir import model_card

    config = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(RECIPES / "base.yaml"),
                                                    {"data": {"train": "rows.jsonl"}}), resolve=True)
    summary = {"steps": 140, "world_size": 2, "eval_accuracy_start": 0.484, "eval_accuracy_final": 0.6125,
               "prm_eval_final": {"prm_eval/step_auroc": 0.72, "prm_eval/n": 3}, "command": "deepspeed launch/train.py"}
    card = model_card("prm", summary, config)
    assert card.startswith("---\nlibrary_name: transformers\n") and "# prm of a prm_rl run" in card
    assert "the implicit PRM" in card and "- Trained on: `rows.jsonl`" in card
    assert "| `eval_accuracy_final` | 0.6125 |" in card and "| `prm_eval_final.prm_eval/step_auroc` | 0.72 |" in card
    assert "| `prm.learning_rate` | 1e-06 |" in card and "| `steps` | 140 |" in card
    assert "- Command: `deepspeed launch/train.py`" in card


@pytest.mark.parametrize("argv, env, recorded", [
    (["launch/train.py", "+recipe=x"], {}, "python launch/train.py +recipe=x"),
    (["prm-rl train", "+recipe=x"], {}, "prm-rl train +recipe=x"),  # its CPU ranks too (cli/main.py sets argv[0])
    (["prm-rl train-prm", "a=1"], {"CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "2"},
     "deepspeed --module prm_rl.cli.main train-prm a=1"),
    (["prm-rl train", "a=1"], {"TORCHELASTIC_RUN_ID": "x", "GROUP_WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "2"},
     "torchrun --nnodes 1 --nproc_per_node 2 -m prm_rl.cli.main train a=1"),
])
def test_the_recorded_command_is_the_one_to_run_again(monkeypatch, argv, env, recorded):
    """summary.json's command: a run of the installed prm-rl command names it, not the module file it ran from."""
    from prm_rl.trainer import run_dir

    for key in ("CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE", "TORCHELASTIC_RUN_ID", "GROUP_WORLD_SIZE",
                "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.argv", argv)
    assert run_dir.command_line() == recorded
