"""LoRA roles on one base (prm_rl.models.lora): the reference really is the base, a merged export computes what
base + adapter computes, checkpointed and plain forwards give the same gradients, bad options are one line.
Real PEFT layers on the built-in tiny Llama; the DeepSpeed side (engines, ranks, optimisers) is in
tests/integration/test_rank_exactness.py and test_lora_runs.py."""
from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM

from prm_rl.config import ConfigError, LoraSection, to_config
from prm_rl.data import arithmetic
from prm_rl.models.lora import SharedBase, trainable_parameters
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

TOK = build_char_tokenizer(arithmetic.CHARACTERS)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=32)


def tiny(gradient_checkpointing: bool = False) -> torch.nn.Module:
    model = build_tiny_model(SHAPE, TOK, seed=0)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def both(model: torch.nn.Module, **settings) -> SharedBase:
    lora = LoraSection(r=4, **settings)
    return SharedBase(model, {"policy": ("model.lora", lora), "prm": ("prm.lora", lora)}, seed=0)


def trained(shared: SharedBase) -> SharedBase:
    """Move both adapters off their start (B = 0 makes every role the base until trained)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for role in shared.roles:
            for p in shared.adapter_parameters(role):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return shared


IDS = torch.randint(4, len(TOK), (3, 12), generator=torch.Generator().manual_seed(0))


def logp(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=IDS).logits.float(), dim=-1)


def test_the_reference_view_is_the_base_exactly_and_the_roles_differ():
    plain = tiny()
    shared = trained(both(tiny()))
    policy, prm, ref = shared.view("policy"), shared.view("prm"), shared.view(None)
    for _ in range(2):  # in any order of calls: each view switches to its own adapter
        assert torch.equal(logp(ref), logp(plain))
        assert (logp(policy) - logp(plain)).abs().max() > 1e-2
        assert (logp(prm) - logp(policy)).abs().max() > 1e-2


def test_each_view_trains_its_own_adapter_and_the_base_is_frozen():
    shared = both(tiny())
    policy, prm, ref = shared.view("policy"), shared.view("prm"), shared.view(None)
    own = {role: {id(p) for p in trainable_parameters(v)} for role, v in (("policy", policy), ("prm", prm))}
    assert own["policy"] and own["prm"] and not own["policy"] & own["prm"] and trainable_parameters(ref) == []
    frozen = [n for n, p in shared.model.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in n for n in frozen)
    prm(input_ids=IDS).logits.sum().backward()  # PEFT's switch would freeze the inactive adapter: not here
    assert all(p.requires_grad for p in trainable_parameters(policy))
    assert all(p.grad is None for p in trainable_parameters(policy))
    assert all(p.grad is not None for p in trainable_parameters(prm))


def test_adapters_start_at_the_base_and_their_init_follows_the_seed_only():
    a, b = both(tiny()), both(tiny())
    torch.manual_seed(123)  # the run's random stream must not matter, nor be consumed
    state = torch.get_rng_state()
    c = both(tiny())
    assert torch.equal(torch.get_rng_state(), state)
    for x, y in zip(a.adapter_parameters("policy"), c.adapter_parameters("policy")):
        assert torch.equal(x, y)
    assert torch.equal(logp(b.view("policy")), logp(tiny()))


def test_merged_export_and_adapter_export_compute_what_base_plus_adapter_computes(tmp_path):
    import peft

    shared = trained(both(tiny()))
    policy = shared.view("policy")
    names = [n for n, _ in policy.merged_named_parameters()]
    assert names == [n for n, _ in tiny().named_parameters(remove_duplicate=False)]  # Hugging Face's names
    policy.save_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(logp(merged), logp(policy), rtol=0, atol=1e-5)
    path = policy.save_adapter(tmp_path / "adapters")
    assert path == tmp_path / "adapters" / "policy"
    loaded = peft.PeftModel.from_pretrained(tiny(), str(path))
    torch.testing.assert_close(logp(loaded), logp(policy), rtol=0, atol=1e-6)
    assert torch.equal(logp(shared.view(None)), logp(tiny()))  # merging aside left the base as it was


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        shared = trained(both(tiny(checkpointing)))
        view = shared.view("policy")
        view.shared_model.train()  # HF checkpoints only in training mode
        view(input_ids=IDS).logits.logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in trainable_parameters(view)]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_dropout_applies_to_forwards_that_compute_gradients_only():
    shared = trained(both(tiny(), dropout=0.5))
    policy = shared.view("policy")
    assert torch.equal(logp(policy), logp(policy))  # no_grad: sampling, old and reference log-probs
    with torch.enable_grad():
        noisy = policy(input_ids=IDS).logits.detach().float().log_softmax(-1)
    assert not torch.allclose(noisy, logp(policy))


def test_a_target_module_the_model_lacks_is_one_line_naming_the_option():
    with pytest.raises(ConfigError, match=r"^prm\.lora\.target_modules=\['q_proj', 'attn_c'\]: .*attn_c") as err:
        SharedBase(tiny(), {"prm": ("prm.lora", LoraSection(r=4, target_modules=["q_proj", "attn_c"]))})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"lora": {"r": -1}}}, r"^model\.lora\.r=-1: must be >= 0"),
    ({"prm": {"lora": {"r": 8, "alpha": 0}}}, r"^prm\.lora\.alpha=0\.0: must be > 0"),
    ({"prm": {"lora": {"r": 8, "dropout": 1.0}}}, r"^prm\.lora\.dropout=1\.0: must be in \[0, 1\)"),
    ({"model": {"lora": {"r": 8, "target_modules": []}}}, r"^model\.lora\.target_modules: empty"),
    ({"prm": {"lora": {"r": 8}, "init_path": "/x"}}, r"^prm\.lora\.r=8: .*prm\.init_path=/x"),
    ({"model": {"lora": {"r": 8}, "offload_reference": True}}, r"^model\.offload_reference=true: with model\.lora"),
    ({"model": {"lora": {"r": 8}}, "prm": {"lora": {"r": 8}}, "deepspeed": {"zero_stage": 3}},
     r"^deepspeed\.zero_stage=3 with model\.lora\.r and prm\.lora\.r both > 0"),
])
def test_bad_lora_options_are_one_line_naming_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        to_config(overrides)
    assert "\n" not in str(err.value)


def test_lora_off_by_default_and_either_role_alone_is_accepted():
    assert to_config({}).model.lora.r == 0 and to_config({}).prm.lora.r == 0
    to_config({"model": {"lora": {"r": 8}}, "deepspeed": {"zero_stage": 3}})
    to_config({"prm": {"lora": {"r": 8}}, "deepspeed": {"zero_stage": 3}})
    targets = to_config({"model": {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}}}).model.lora.target_modules
    assert list(targets) == ["q_proj", "v_proj"]
