"""Resume on another number of ranks, with real DeepSpeed runs: ZeRO-2 with LoRA adapters written by two ranks and
resumed on one, ZeRO-3 written by one rank and resumed on two.

What a checkpoint holds comes back exactly on the new ranks: every trained weight, both Adam moments and the step
counts (read through DeepSpeed's universal form, which is the same whatever rank count wrote it), the prompt
position. What comes after differs: each rank samples with its own random stream, so the resumed steps are compared
with the uninterrupted run's loosely (docs/checkpoints.md, "Resume on another number of ranks").
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prm_rl.trainer import checkpoint
from prm_rl.trainer.faults import RunStopped
from tiny_runs import launch, metrics

# A step that learns nothing: every response is cut at one token and every group with a cut response is dropped,
# so its checkpoint holds exactly the state the run loaded.
LEARNS_NOTHING = ["rollout.max_new_tokens=1", "filter.drop_truncated=true"]
# Metrics of one step's samples and the largest difference allowed between the uninterrupted run and the resized
# one at the step after the checkpoint: other samples, so loose (measured 0.03 and 1.1 at most; 0.5 is 4 standard
# deviations of the accuracy of 32 responses drawn twice, at worst): a broken model fails, a changed one passes.
CLOSE = {"acc/before_filter": 0.5, "response/length_mean": 6.0}
CASES = {
    "zero2-lora-2-to-1": (2, 1, ["deepspeed.zero_stage=2", "model.lora.r=8", "prm.lora.r=8"]),
    "zero3-1-to-2": (1, 2, ["deepspeed.zero_stage=3"]),
}


def trained_states(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{parameter: {"fp32" | "exp_avg" | "exp_avg_sq" [| "step"]: tensor}}`` of the parameters with optimiser
    state in a universal checkpoint (ZeRO-1/2 keep Adam's step per parameter, ZeRO-3 in optimizer_state.pt)."""
    states = {}
    for parameter in sorted(p for p in (folder / "zero").iterdir() if p.is_dir()):
        files = {f.stem: torch.load(f, weights_only=False) for f in parameter.glob("*.pt")}
        if "exp_avg" in files:
            states[parameter.name] = {k: torch.as_tensor(v["param"] if isinstance(v, dict) else v)
                                      for k, v in files.items()}
    return states


def step_counts(folder: Path) -> dict:
    """The engine's optimiser-step counter and, at ZeRO-3, Adam's step per parameter group."""
    model_states = torch.load(next(folder.glob("*model_states.pt")), weights_only=False)
    optimiser = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=False)
    adam = optimiser.get("optimizer_state_dict", {}).get("state", {})
    return {"global_steps": model_states["global_steps"], "adam": [float(s["step"]) for s in adam.values()]}


def assert_same_state(before: Path, after: Path, engines: list[str], scratch: Path) -> None:
    """Checkpoints ``before`` and ``after`` hold bitwise the same trained weights, Adam moments and step counts."""
    for name in engines:
        a = checkpoint.to_universal(before / name / "ds", scratch / "before" / name / "state")
        b = checkpoint.to_universal(after / name / "ds", scratch / "after" / name / "state")
        states_a, states_b = trained_states(a), trained_states(b)
        assert states_a and states_a.keys() == states_b.keys(), name
        for parameter, state in states_a.items():
            assert state.keys() == states_b[parameter].keys(), (name, parameter)
            for key in state:
                assert torch.equal(state[key], states_b[parameter][key]), (name, parameter, key)
        assert step_counts(a) == step_counts(b), name


def trainer_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, warm_cache, case):
    saved_ranks, resumed_ranks, setup = CASES[case]
    common = [*setup, "wandb.mode=disabled", "trainer.checkpoint_every=1", "prm_eval.num_prompts=0"]
    uninterrupted = tmp_path / "uninterrupted"
    proc = launch(warm_cache, uninterrupted, [*common, "trainer.max_steps=3"], num_ranks=saved_ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    step_2 = uninterrupted / "checkpoints" / "step_000002"

    # The state comes back exactly: a step that learns nothing saves what the new ranks loaded.
    held = tmp_path / "held"
    proc = launch(warm_cache, held, [*common, *LEARNS_NOTHING, "trainer.max_steps=3", f"trainer.resume={step_2}"],
                  num_ranks=resumed_ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming on a different world size: {resumed_ranks} ranks, the checkpoint was written by " \
           f"{saved_ranks}" in proc.stdout
    assert metrics(held)[0]["step"] == 3 and "policy/loss" not in metrics(held)[0]  # nothing was learned
    assert_same_state(step_2, held / "checkpoints" / "step_000003", ["policy", "prm"], tmp_path / "universal")
    for name in ("policy", "prm"):  # and the model's own weights: the exports of what was saved and what was loaded
        saved = load_file(step_2 / name / "hf" / "model.safetensors")
        loaded = load_file(held / name / "model.safetensors")
        assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved), name
    # the prompt stream is where the uninterrupted run's was after the same step
    assert trainer_state(held / "checkpoints" / "step_000003")["prompt_position"] == \
        trainer_state(uninterrupted / "checkpoints" / "step_000003")["prompt_position"]
    assert trainer_state(held / "checkpoints" / "step_000003")["world_size"] == resumed_ranks
    assert not (held / "checkpoints" / "repartition.tmp").exists()

    # Training goes on from there on the new ranks, with other samples: close to the uninterrupted run, not equal.
    resumed = tmp_path / "resumed"
    proc = launch(warm_cache, resumed, [*common, "trainer.max_steps=3", f"trainer.resume={step_2}"],
                  num_ranks=resumed_ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (after,), (reference,) = metrics(resumed), [r for r in metrics(uninterrupted) if r["step"] == 3]
    assert after["step"] == 3 and after.keys() == reference.keys()
    assert all(v is None or math.isfinite(v) for v in after.values()), after
    for key, tolerance in CLOSE.items():
        assert abs(after[key] - reference[key]) <= tolerance, (key, after[key], reference[key])
    assert after["policy/grad_norm"] > 0 and after["prm/grad_norm"] > 0


def test_a_checkpoint_without_its_world_size_stops_with_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "checkpoints" / "step_000002"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 2}))  # an older layout
    with pytest.raises(RunStopped) as stopped:
        checkpoint.load(folder, {}, run_dir=tmp_path, seed=0, log=print)
    assert str(stopped.value) == f"checkpoint {folder / 'trainer_state.json'}: no world_size (an older layout?)"
