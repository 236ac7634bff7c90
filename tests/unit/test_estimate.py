"""prm_rl.trainer.memory and its command prm_rl.cli.estimate: parameter counts against real models, each memory term
against hand-derived values, the CLI."""
from __future__ import annotations

import copy
import math
import dataclasses
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from prm_rl.cli.startup import compose
from prm_rl.cli.estimate import main as estimate_main
from prm_rl.trainer import memory as est
from prm_rl.data import arithmetic
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

SMALL = ["+recipe=math_ppo", "task.train_size=200", "task.eval_size=32"]  # fast to compose and to scan for prompts
TINY = TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def cfg():
    return compose(SMALL, world_size=2)


def with_(cfg, **changes):
    """A copy of ``cfg`` with ``section__field=value`` changes."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(out, section), name, value)
    return out


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_tiny_model_parameters_by_hand_and_against_the_real_model():
    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    vocab = len(tokenizer)  # 4 special tokens + 24 characters
    assert vocab == 28
    # embedding 28*16 (tied lm_head) + layer (q,k,v,o 4*16*16 + gate,up,down 3*16*32 + 2 norms 2*16) + final norm 16
    by_hand = 28 * 16 + (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16
    shape = est.shape_of_tiny(TINY, vocab)
    assert est.param_count(shape) == by_hand == 3056 == numel(build_tiny_model(TINY, tokenizer, seed=0))


@pytest.mark.parametrize("config_class, model_class, extra", [
    (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True,
                                         mlp_bias=True)),
    (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=1, tie_word_embeddings=False)),  # q/k/v biases
    (Qwen3Config, Qwen3ForCausalLM, dict(num_key_value_heads=2, head_dim=12, tie_word_embeddings=True)),  # q/k norms
])
def test_hf_configs_count_as_many_parameters_as_their_models(config_class, model_class, extra):
    config = config_class(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=48, **extra)
    assert est.param_count(est.shape_from_hf(config)) == numel(model_class(config))


def test_an_unsupported_architecture_is_one_line():
    from transformers import GPT2Config

    with pytest.raises(est.EstimateError, match="^model_type 'gpt2': only Llama-style decoders"):
        est.shape_from_hf(GPT2Config())


N = 1000  # parameters of a made-up model for the ZeRO arithmetic


@pytest.mark.parametrize("stage, world, params, grads, optimizer", [
    # fp32: params 4 B, grads 4 B, AdamW 8 B; stages 1-3 add DeepSpeed's fp32 master copy (4 B), sharded with
    # the optimiser states from stage 1; gradients sharded from 2, parameters at 3
    (0, 1, 4000, 4000, 8000), (0, 2, 4000, 4000, 8000),
    (1, 1, 4000, 4000, 12000), (1, 2, 4000, 4000, 6000),
    (2, 1, 4000, 4000, 12000), (2, 2, 4000, 2000, 6000),
    (3, 1, 4000, 4000, 12000), (3, 2, 2000, 2000, 6000),
])
def test_zero_stages_divide_the_terms(stage, world, params, grads, optimizer):
    assert est.param_bytes(N, 4, stage, world, offload=False) == est.Bytes(params, 0)
    assert est.grad_bytes(N, 4, stage, world) == grads
    assert est.optimizer_bytes(N, 4, stage, world, offload=False) == est.Bytes(optimizer, 0)


def test_offload_moves_optimizer_states_and_stage3_parameters_to_the_host():
    # optimiser: AdamW 8 + master 4 + the master's fp32 gradient 4, over 2 ranks, all host-side
    assert est.optimizer_bytes(N, 4, 2, 2, offload=True) == est.Bytes(0, 8000)
    assert est.param_bytes(N, 4, 2, 2, offload=True) == est.Bytes(4000, 0)  # parameters stay below stage 3
    assert est.param_bytes(N, 4, 3, 2, offload=True) == est.Bytes(0, 2000)
    assert est.optimizer_bytes(N, 4, 0, 2, offload=True) == est.Bytes(8000, 0)  # stage 0: nothing to offload
    assert est.step_bytes(N, 4, 2, 2, offload=True) == 0  # DeepSpeed's CPU Adam works in place


def test_bf16_halves_parameters_and_gradients_and_adds_fp32_master_weights():
    assert est.param_bytes(N, 2, 0, 1, offload=False).device == 2000
    assert est.grad_bytes(N, 2, 0, 1) == 2000
    assert est.optimizer_bytes(N, 2, 0, 1, offload=False).device == 8000 + 4000  # stage 0 fp32 has no master
    assert est.step_bytes(N, 2, 0, 1, offload=False) == 8000  # the master's fp32 gradient + AdamW's temporary


def test_the_reduce_bucket_is_whole_on_a_gpu():
    assert est.bucket_bytes(N, 4, 0, resident=False) == 0
    assert est.bucket_bytes(N, 2, 2, resident=False) == est.REDUCE_BUCKET * 2
    assert est.bucket_bytes(N, 2, 3, resident=True) == N * 2  # on CPU: the part gradients fill


def test_estimate_holds_and_frees_the_terms_of_each_model_by_zero_stage(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    n = est.param_count(shape)
    for stage in range(4):
        for world in (1, 2):
            e = est.estimate(with_(cfg, deepspeed__zero_stage=stage), world, shape)
            policy, prm, ref = e.models
            assert policy.params == est.param_bytes(n, 4, stage, world, False)
            assert prm.optimizer == est.optimizer_bytes(n, 4, stage, world, False)
            assert prm.grads == est.grad_bytes(n, 4, stage, world)
            # gradients and bucket are held for the run at stage 3 only, else part of each update
            held = prm.grads + prm.bucket if stage == 3 else 0
            assert prm.static.device == prm.params.device + prm.optimizer.device + prm.gathered + held
            assert prm.transient == max(prm.grads + prm.bucket - held + prm.activations,
                                        prm.grads + prm.bucket - held + prm.step)
            # the frozen reference is sharded only by ZeRO-3 over several ranks (engine.frozen_model)
            assert ref.params.device == (4 * n // world if stage == 3 and world > 1 else 4 * n)
            assert ref.grads == ref.bucket == 0 and ref.optimizer == est.Bytes()
            static = sum(m.static.device for m in e.models)
            assert e.device == static + max(m.transient for m in e.models) and e.host == 0


def test_an_offloaded_reference_waits_in_host_memory(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    on_device = est.estimate(cfg, 2, shape).models[2]
    offloaded = est.estimate(with_(cfg, model__offload_reference=True), 2, shape).models[2]
    assert offloaded.static == est.Bytes(0, on_device.params.device)
    assert offloaded.activations == on_device.activations + on_device.params.device  # on the device while it runs


def test_gradient_checkpointing_lowers_activations(cfg):
    shape = est.shape_of_tiny(TinyModelConfig(hidden_size=64, num_layers=8, num_heads=4, intermediate_size=256), 28)
    plain = est.estimate(cfg, 2, shape).models[0].activations
    checkpointed = est.estimate(with_(cfg, model__gradient_checkpointing=True), 2, shape).models[0].activations
    assert checkpointed < plain / 2


def test_which_models_are_loaded(cfg):
    def names(c) -> list[str]:
        return [m.name for m in est.estimate(c, 2, est.shape_of_tiny(TINY, 28)).models]

    assert names(cfg) == ["policy", "prm", "reference"]
    assert names(with_(cfg, algorithm__advantage="rloo")) == ["policy"]  # no PRM, no reference
    assert names(with_(cfg, algorithm__advantage="rloo", policy__kl_coef=0.1)) == ["policy", "reference"]
    assert names(with_(cfg, prm__reference="policy")) == ["policy", "prm"]
    adapter = dataclasses.replace(cfg.prm.lora, r=4)
    assert names(with_(cfg, prm__lora=adapter)) == ["policy", "prm", "base", "reference"]
    assert names(with_(cfg, algorithm__advantage="rloo", model__lora=adapter)) == ["policy", "base"]  # no reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_reward_model_verifier_holds_its_checkpoints_weights_for_the_run(cfg, tmp_path, dtype):
    """A reward model of verifier.tasks is one more row: the bytes of the weights transformers loads from its
    checkpoint (dtype="auto", as rewards/reward_model.py loads it), held on the device, and its scoring forward."""
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, num_labels=1, tie_word_embeddings=False)
    LlamaForSequenceClassification(config).to(dtype).save_pretrained(tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", dtype="auto")
    weights = sum(p.numel() * p.element_size() for p in loaded.parameters())
    shape = est.shape_of_tiny(TINY, 28)
    tasks = {"rm": {"verifier": "reward_model", "path": str(tmp_path / "rm"), "batch_size": 4, "max_length": 24}}
    without = est.estimate(cfg, 2, shape)
    e = est.estimate(with_(cfg, verifier__tasks=tasks), 2, shape)
    assert [m.name for m in e.models] == [m.name for m in without.models] + ["reward model rm"]
    rm = e.models[-1]
    assert rm.static == est.Bytes(weights, 0) and rm.activations > 0 and rm.grads == rm.optimizer.device == 0
    assert e.static_device == without.static_device + weights
    wider = est.estimate(with_(cfg, verifier__tasks={"rm": {**tasks["rm"], "batch_size": 8}}), 2, shape)
    assert wider.models[-1].activations == 2 * rm.activations  # the forward scales with the batch


def test_a_reward_model_that_cannot_be_read_is_one_line_naming_its_task(cfg, tmp_path):
    (tmp_path / "rm").mkdir()
    tasks = {"judge": {"verifier": "reward_model", "path": str(tmp_path / "rm")}}
    with pytest.raises(est.EstimateError, match=r"verifier\.tasks\.judge\.path="):
        est.estimate(with_(cfg, verifier__tasks=tasks), 2, est.shape_of_tiny(TINY, 28))


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"], ["k_proj", "o_proj", "down_proj"]])
def test_adapter_parameters_are_what_peft_adds(targets):
    """Grouped-query attention (k/v narrower than q) and a head width other than hidden / heads."""
    from prm_rl.config import LoraSection
    from prm_rl.models.lora import SharedBase

    config = Qwen3Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=12, intermediate_size=48)
    lora = LoraSection(r=3, target_modules=targets)
    shared = SharedBase(Qwen3ForCausalLM(config), {"prm": ("prm.lora", lora)})
    assert est.adapter_param_count(est.shape_from_hf(config), lora, "prm.lora") == \
        sum(p.numel() for p in shared.adapter_parameters("prm"))


def test_lora_holds_one_base_and_small_adapters(cfg):
    shape = est.shape_of_tiny(TinyModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024), 28)
    full = est.estimate(cfg, 2, shape, resident=True)  # resident: without the GPU's 2 GB reduce buckets
    lora_config = with_(cfg, model__lora=dataclasses.replace(cfg.model.lora, r=8),
                        prm__lora=dataclasses.replace(cfg.prm.lora, r=8))
    lora = est.estimate(lora_config, 2, shape, resident=True)
    assert [m.name for m in lora.models] == ["policy", "prm", "base", "reference"]
    policy, prm, base, ref = lora.models
    n = est.param_count(shape)
    assert base.params.device == 4 * n and ref.params.device == 0  # the reference is the base: no copy
    adapter = est.adapter_param_count(shape, lora_config.model.lora, "model.lora")
    assert adapter > 0 and policy.params.device == prm.params.device == 4 * adapter
    assert policy.activations == full.models[0].activations  # forwards run through the whole base all the same
    def held(e: est.Estimate) -> int:
        return sum(m.static.device for m in e.models)

    assert held(lora) < held(full) / 4  # one base, no second and third copy, no optimiser states for it
    assert lora.device < full.device
    with pytest.raises(est.EstimateError, match=r"^model\.lora\.target_modules: 'c_attn' is not"):
        bad = dataclasses.replace(cfg.model.lora, r=8, target_modules=["c_attn"])
        est.estimate(with_(cfg, model__lora=bad), 2, shape)


def test_micro_batch_rows_follow_the_batch_config(cfg):
    c = with_(cfg, rollout__prompts_per_step=8, rollout__samples_per_prompt=4, policy__micro_batch_size=64,
              prm__micro_batch_size=6, policy__mini_batches=2)
    assert est.policy_rows(c, world=2, length=50) == 8  # 32 rows / 2 mini-batches / 2 ranks
    assert est.prm_rows(c, world=2, length=50) == 4  # 6 rounded down to whole groups of 4
    assert est.policy_rows(with_(c, policy__micro_batch_tokens=120), world=2, length=50) == 2  # 120 // 50 rows
    assert est.kv_cache_bytes(est.shape_of_tiny(TINY, 28), 4, rows=3, length=10) == 3 * 1 * 2 * 2 * 8 * 10 * 4


def test_saved_activations_match_what_autograd_keeps():
    """The per-layer formula against the tensors autograd saves in a real forward (sdpa, fp32 and bf16)."""
    shape = est.ModelShape(vocab=30, hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16, intermediate=256,
                           tied=True)
    rows, length = 4, 32
    for dtype, p in ((torch.float32, 4), (torch.bfloat16, 2)):
        config = LlamaConfig(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=256, tie_word_embeddings=True, attn_implementation="sdpa")
        model = LlamaForCausalLM(config).to(dtype).train()
        params = {q.untyped_storage().data_ptr() for q in model.parameters()}
        saved: dict[int, int] = {}

        def keep(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        mask = torch.ones(rows, length, dtype=torch.long)
        mask[0, :5] = 0  # padding: sdpa gets an explicit mask
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(input_ids=torch.randint(0, 30, (rows, length)), attention_mask=mask, use_cache=False)
        t = rows * length
        formula = (shape.layers * est.layer_bytes_per_token(shape, p) * t + rows * length * length * p
                   + (4 * 64 + 4 + 2 * 64 * p + 8) * t)  # layers, mask, final norm and token ids
        assert sum(saved.values()) == pytest.approx(formula, rel=0.02)


def test_cli_exits_1_with_one_line_when_it_does_not_fit(capsys):
    assert estimate_main([*SMALL, "--world-size", "2", "--gpu-gib", "0.01"]) == 1
    out, err = capsys.readouterr()
    assert "total/rank" in out
    assert err.strip().count("\n") == 0 and err.startswith("estimate: ") and "does not fit in 0.0 GiB" in err
    assert estimate_main([*SMALL, "--world-size", "2", "--gpu-gib", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fits"] and set(report["models"]) == {"policy", "prm", "reference"}
    assert report["total"]["device"] < 80 * est.GIB


def test_check_fits(cfg):
    assert est.check_fits(cfg, 2, 80 * est.GIB) is None
    assert est.check_fits(cfg, 2, 1).startswith("estimate: ")


def test_launch_warning_against_this_machine(cfg, monkeypatch):
    assert est.launch_warning(cfg, 2) is None  # the built-in job fits a CPU box
    monkeypatch.setattr(est, "machine_capacity", lambda world_size: 1)
    assert est.launch_warning(cfg, 2).startswith("estimate: ")
    unreadable = with_(cfg, model__path="/nonexistent/model")
    assert est.launch_warning(unreadable, 2) is None  # no shape, no estimate: the loader reports the path


def test_cli_config_errors_are_one_line_exit_2(capsys):
    assert estimate_main([*SMALL, "rollout.prompts_per_step=3", "--world-size", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("config error: rollout.prompts_per_step=3: must divide evenly over 2 "
                                               "ranks")


# ------------------------------------------------------------------------------------------------ vLLM's engine
GPU = 80 * est.GIB


def with_vllm(cfg, **settings):
    """``cfg`` sampling with vLLM, ``rollout.vllm.<key>=value`` for each of ``settings``."""
    return with_(cfg, rollout__engine="vllm", rollout__vllm=dataclasses.replace(cfg.rollout.vllm, **settings))


def test_logits_are_counted_at_the_response_positions_only():
    """logits_to_keep: a longer prompt adds layer activations but no logits; each scored position adds its logits,
    their gradient (model dtype), its fp32 log-sum-exp and (under the chunk cap) its fp32 softmax chunk."""
    shape = est.shape_of_tiny(TINY, 28)
    def train(length: int, scored: int) -> int:
        return est.train_activation_bytes(shape, 4, 3, length, False, scored)

    assert train(50, 11) - train(50, 10) == 3 * (2 * 28 * 4 + 4 + 4 * 28)
    assert train(60, 10) - train(50, 10) == train(60, 20) - train(50, 20) > 0  # the prompt: layers, not logits
    forward = est.forward_activation_bytes(shape, 4, 3, 50, 11) - est.forward_activation_bytes(shape, 4, 3, 50, 10)
    assert forward == 3 * (28 * 4 + 4 + 4 * 28)


def test_the_vllm_term_is_there_with_vllm_and_not_with_hf(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    hf = est.estimate(cfg, 2, shape, gpu_bytes=GPU)
    vllm = est.estimate(with_vllm(cfg), 2, shape, gpu_bytes=GPU)
    assert hf.vllm is None and est.as_dict(hf)["vllm"] is None
    assert vllm.vllm is not None and est.as_dict(vllm)["vllm"]["reservation"] == vllm.vllm.reservation > 0
    assert "vllm" not in est.table(hf) and "\n      vllm" in est.table(vllm)


def test_no_hf_kv_cache_for_what_vllm_samples(cfg):
    """vLLM samples the policy's rollouts, held-out and PRM-evaluation rows, and the reference's held-out set (given
    the reference's weights for it)."""
    shape = est.shape_of_tiny(TINY, 28)
    hf = {m.name: m for m in est.estimate(cfg, 2, shape).models}
    vllm = {m.name: m for m in est.estimate(with_vllm(cfg), 2, shape, gpu_bytes=GPU).models}
    assert hf["policy"].kv_cache > 0 and vllm["policy"].kv_cache == 0
    assert hf["reference"].kv_cache > 0 and vllm["reference"].kv_cache == 0


def test_vllms_share_is_held_through_the_update_at_sleep_level_0_only(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    awake = est.estimate(with_vllm(cfg, gpu_memory_utilization=0.3, sleep_level=0), 2, shape, gpu_bytes=GPU)
    asleep = est.estimate(with_vllm(cfg, gpu_memory_utilization=0.3, sleep_level=2), 2, shape, gpu_bytes=GPU)
    share = 24 * est.GIB  # 0.3 x 80 GiB
    assert awake.vllm.reservation == asleep.vllm.reservation == awake.vllm.requested == share
    trainer = awake.static_device + max(m.transient for m in awake.models)
    assert awake.trainer_phase == trainer + share and asleep.trainer_phase == trainer
    # the sampling phase: one full parameter in transit, here the MLP's [32, 16] in fp32 (wider than the 28-row
    # embedding)
    assert awake.vllm.sync == 32 * 16 * 4
    assert awake.vllm_phase == asleep.vllm_phase == asleep.static_device + share + 32 * 16 * 4
    assert awake.device == trainer + share and asleep.device == asleep.vllm_phase
    assert awake.host == asleep.host == 0


def test_sleep_level_1_keeps_vllms_weights_in_host_memory(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    e = est.estimate(with_vllm(cfg, sleep_level=1), 2, shape, gpu_bytes=GPU)
    assert e.vllm.weights == 3056 * 4 and e.host == 3056 * 4  # the tiny model's parameters in fp32
    assert e.trainer_phase == e.static_device + max(m.transient for m in e.models)


def test_sleep_level_null_is_2_on_a_gpu_and_0_on_cpu(cfg):
    auto = with_vllm(cfg).rollout.vllm
    auto.sleep_level = None
    assert est.vllm_sleep_level(auto, gpu=True) == 2 and est.vllm_sleep_level(auto, gpu=False) == 0
    assert est.vllm_sleep_level(with_vllm(cfg, sleep_level=1).rollout.vllm, gpu=True) == 1


def test_a_set_kv_cache_holds_weights_kv_cache_and_profile_run(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    e = est.estimate(with_vllm(cfg, kv_cache_gib=2.0), 2, shape, gpu_bytes=GPU).vllm
    # profile run on an 80 GiB GPU: 16384 tokens x one layer's working set (q, k, v, out 4 x 16; gate, up,
    # product 3 x 32; residual and its norm 2 x 16; fp32) + 1024 sequences x 3 fp32 [28] sampler tensors
    profile = 16384 * (4 * 16 + 3 * 32 + 2 * 16) * 4 + 1024 * 3 * 4 * 28
    assert e.profile == profile
    assert e.kv_cache == 2 * est.GIB and e.reservation == 3056 * 4 + 2 * est.GIB + profile
    assert e.requested == math.ceil(0.3 * GPU)  # still checked free when vLLM starts
    on_cpu = est.estimate(with_vllm(cfg), 2, shape).vllm  # the CPU engine's cache: CPU_KV_CACHE_GIB, no share
    assert on_cpu.kv_cache == est.GIB // 2 and on_cpu.requested == 0


def test_the_warning_names_gpu_memory_utilization_when_vllms_share_does_not_fit(cfg, monkeypatch):
    shape = est.shape_of_tiny(TINY, 28)
    e = est.estimate(with_vllm(cfg, gpu_memory_utilization=0.9), 2, shape, gpu_bytes=GPU)
    assert est.fit_message(e, GPU) is None  # 72 GiB beside the tiny models' few
    # the same share of a GPU the models already fill a quarter of: vLLM would not start
    tight = est.fit_message(e, e.static_device + e.vllm.requested - 1)
    assert "(vLLM's 72.0 GiB included)" in tight
    assert "rollout.vllm.gpu_memory_utilization=0.9 takes 72.0 GiB beside the" in tight and tight.endswith("lower it")
    # the trainer warns with it: the built-in model on a 20 GiB GPU, where 0.9 of it fits beside the models' few MiB
    # but not beside an update's 2 GiB as well (DeepSpeed's reduce buckets) at sleep level 0
    monkeypatch.setattr(est, "has_gpu", lambda: True)
    monkeypatch.setattr(est, "machine_capacity", lambda world_size: 20 * est.GIB)
    warning = est.launch_warning(with_vllm(cfg, gpu_memory_utilization=0.9, sleep_level=0), 2)
    assert warning.startswith("estimate: ") and warning.endswith(
        "rollout.vllm.gpu_memory_utilization=0.9 takes 18.0 GiB beside the 0.0 GiB the trainer's models hold and keeps "
        "it through the update (sleep_level 0): lower it or sleep")
    assert est.launch_warning(with_vllm(cfg, gpu_memory_utilization=0.9, sleep_level=2), 2) is None
    assert est.launch_warning(with_vllm(cfg, gpu_memory_utilization=0.5, sleep_level=0), 2) is None


def test_a_share_too_small_for_one_sequence_is_refused(cfg):
    shape = est.shape_of_tiny(TINY, 28)
    e = est.estimate(with_vllm(cfg, gpu_memory_utilization=0.05), 2, shape, gpu_bytes=100 * 2**20)
    # 5 MiB of a 100 MiB device: less than weights and the profile run of a small GPU's step (8192 tokens x 768 +
    # 256 sequences x 3 x 4 x 28 bytes)
    assert e.vllm.profile == 8192 * 768 + 256 * 3 * 4 * 28 and e.vllm.kv_cache < 0
    assert "holds less than one max_model_len sequence" in est.fit_message(e, 100 * 2**20)
    roomy = est.estimate(with_vllm(cfg, gpu_memory_utilization=0.5), 2, shape, gpu_bytes=100 * 2**20)
    # 50 MiB: room for one sequence of the tiny model (the run still does not fit: DeepSpeed's 2 GiB of buckets)
    assert "max_model_len" not in est.fit_message(roomy, 100 * 2**20)


def test_cli_vllm_needs_the_gpus_memory_and_reports_its_term(capsys):
    assert estimate_main([*SMALL, "rollout.engine=vllm", "--world-size", "2"]) == 2
    assert capsys.readouterr().err.strip() == ("config error: rollout.engine=vllm: vLLM takes "
                                               "rollout.vllm.gpu_memory_utilization of a GPU's memory: give --gpu-gib")
    assert estimate_main([*SMALL, "rollout.engine=vllm", "--world-size", "2", "--gpu-gib", "80", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vllm"]["reservation"] == report["vllm"]["requested"] == 24 * est.GIB  # base.yaml's 0.3
    assert report["total"]["device"] == max(report["phases"].values())
