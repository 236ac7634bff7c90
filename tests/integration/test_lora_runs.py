"""Real runs with LoRA adapters on one base (model.lora, prm.lora): two ranks with both adapters on the vllm engine,
killed with SIGKILL and resumed as if uninterrupted, exporting merged models that compute what base + adapter
computes; the policy alone as an adapter under ZeRO-3 with bf16, gradient checkpointing and the KL term; a LoRA
PRM trained offline by launch/train_prm.py."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_runs import assert_same_run, command, environment, kill_all, launch, metrics, require_vllm, \
    run_retrying_startup_abort, start, wait_for

BOTH = ["model.lora.r=8", "prm.lora.r=8", "model.lora.alpha=16", "prm.lora.alpha=32"]


def logp(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


def assert_exports_are_base_plus_adapter(run_dir, roles: list[str]) -> None:
    """RUN/<role> (merged, what every prm_rl command reads) computes what the starting model + RUN/adapters/<role>
    (PEFT's format) computes."""
    import peft

    ids = torch.randint(4, 20, (2, 16), generator=torch.Generator().manual_seed(0))
    for role in roles:
        # the adapter names its base: the run's starting checkpoint
        start_model = json.loads((run_dir / "adapters" / role / "adapter_config.json").read_text())[
            "base_model_name_or_path"]
        merged = AutoModelForCausalLM.from_pretrained(run_dir / role)
        adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(start_model),
                                                 str(run_dir / "adapters" / role))
        torch.testing.assert_close(logp(merged, ids), logp(adapted, ids), rtol=0, atol=1e-4, msg=role)
        assert (logp(merged, ids) - logp(AutoModelForCausalLM.from_pretrained(start_model), ids)).abs().max() > 1e-4
    assert sorted(p.name for p in (run_dir / "adapters").iterdir() if p.is_dir()) == sorted(roles)


@pytest.mark.slow
def test_two_ranks_with_both_adapters_on_the_vllm_engine_resume_after_sigkill_as_if_uninterrupted(tmp_path,
                                                                                                  warm_cache):
    require_vllm()
    run = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "rollout.engine=vllm", *BOTH]
    uninterrupted = tmp_path / "uninterrupted"
    proc = launch(warm_cache, uninterrupted, run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = metrics(uninterrupted)
    for r in rows:  # vLLM sampled the merged policy of that very step: a missed sync would show as a large diff
        assert 0 < r["rollout/logprob_diff"] < 1e-4 and r["policy/grad_norm"] > 0 and r["prm/grad_norm"] > 0
    assert rows[0]["prm/loss"] == pytest.approx(0.6931, abs=1e-3)  # the PRM adapter starts at 0: log-ratios 0

    run_dir = tmp_path / "run"
    proc = start(warm_cache, run_dir, run, tmp_path / "first.log")
    wait_for(lambda: len(metrics(run_dir)) >= 3, proc)  # step 3 logged, step 2 checkpointed
    kill_all(proc)
    resumed = launch(warm_cache, run_dir, run)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step_000002" in resumed.stdout
    assert_same_run(uninterrupted, run_dir)  # adapters and their optimiser states came back exactly

    # A checkpoint holds the adapters, not the frozen base (the starting checkpoint has it).
    model_bytes = (uninterrupted / "policy" / "model.safetensors").stat().st_size
    for role in ("policy", "prm"):
        saved = sum(f.stat().st_size for f in (uninterrupted / "checkpoints" / "step_000004" / role / "ds").rglob("*")
                    if f.is_file())
        assert saved < model_bytes / 2, (role, saved, model_bytes)
    assert_exports_are_base_plus_adapter(uninterrupted, ["policy", "prm"])


@pytest.mark.slow
def test_a_policy_adapter_trains_under_zero3_with_bf16_checkpointing_and_kl(tmp_path, warm_cache):
    run_dir = tmp_path / "run"
    proc = launch(warm_cache, run_dir, ["trainer.max_steps=2", "model.lora.r=8", "deepspeed.zero_stage=3",
                                        "model.dtype=bfloat16", "model.gradient_checkpointing=true",
                                        "policy.kl_coef=0.05"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for r in metrics(run_dir):
        assert r["policy/grad_norm"] > 0 and r["prm/grad_norm"] > 0
    assert (run_dir / "adapters" / "policy").is_dir() and not (run_dir / "adapters" / "prm").exists()
    assert (run_dir / "prm" / "config.json").exists()  # the PRM is a full model here


@pytest.mark.slow
def test_train_prm_trains_a_lora_prm_and_exports_it_merged(tmp_path, warm_cache):
    run_dir = tmp_path / "prm"
    cmd = command(warm_cache, run_dir, ["prm_train.num_prompts=8", "prm_train.samples_per_prompt=4",
                                        "prm_train.prompts_per_update=4", "prm_train.epochs=2",
                                        "prm.learning_rate=1e-3", "trainer.checkpoint_every=0", "prm.lora.r=8"],
                  num_ranks=1, entry="launch/train_prm.py", recipe="prm_math")
    proc = run_retrying_startup_abort(cmd, environment())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["prm_eval_final"]["prm_eval/ce"] != summary["prm_eval_start"]["prm_eval/ce"]
    assert_exports_are_base_plus_adapter(run_dir, ["prm"])
