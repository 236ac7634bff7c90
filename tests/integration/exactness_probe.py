"""Run the learning half of one PRIME step (:func:`prm_rl.trainer.step.learn`, the function the trainer calls)
on a fixed batch and save what it computed, for each of several cases in one launch.

Launched by tests/integration/test_rank_exactness.py as ``deepspeed --num_gpus R exactness_probe.py CASES.json
OUT_DIR``, where CASES.json maps a case's name to its key=value overrides (``--uniform-groups`` among them for
the batch with groups of one outcome); each case is written to ``OUT_DIR/<name>.pt``. Every case builds its own
engines from the same seeds, so one launch runs many cases (a launch costs more than a case). The same batch and
the same initial weights on 1 and on 2 ranks must give the same log-ratios, advantages, metrics and updated
weights, up to float reduction order.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.argv = [a for a in sys.argv if not a.startswith("--local_rank")]

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from prm_rl.config import Config, register_schema, to_config  # noqa: E402
from prm_rl.engine import dist  # noqa: E402
from prm_rl.engine.deepspeed_engine import frozen_model, full_parameters, trainable_engine  # noqa: E402
from prm_rl.data import arithmetic  # noqa: E402
from prm_rl.models.lora import ADAPTER_PREFIX, SharedBase, lora_adapters  # noqa: E402
from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model  # noqa: E402
from prm_rl.rollout.generate import Rollout, response_mask_from_ids  # noqa: E402
from prm_rl.trainer import stages  # noqa: E402
from prm_rl.trainer.step import LearnSections, learn  # noqa: E402

REPO = __file__.rsplit("/tests/", 1)[0]


def fixed_batch(n: int, vocab: int, eos: int, k: int, newline: int) -> Rollout:
    """Random prompts and responses of varied lengths, identical on every rank (fixed seed). The responses of a
    group share prefixes of 0-8 tokens and have step delimiters at tokens 2 and 5, so the group's prefix tree
    branches at different steps."""
    g = torch.Generator().manual_seed(7)
    prompt_ids = torch.randint(4, vocab, (n, 6), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[::3, :2] = 0  # some left padding
    prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, 0)
    response_ids = torch.randint(4, vocab, (n, 12), generator=g)
    response_ids = response_ids.masked_fill(response_ids == eos, 4)
    response_ids[:, [2, 5]] = newline
    shared = torch.randint(0, 9, (n,), generator=g)
    for i, s in enumerate(shared.tolist()):
        response_ids[i, :s] = response_ids[i - i % k, :s]
    stops = torch.randint(3, 13, (n,), generator=g)
    for i, s in enumerate(stops.tolist()):
        if s < 12:
            response_ids[i, s] = eos
    mask, truncated = response_mask_from_ids(response_ids, eos)
    return Rollout(prompt_ids, prompt_mask, response_ids.masked_fill(mask == 0, 0), mask, truncated)


def flat_weights(engine) -> torch.Tensor:
    with full_parameters(engine) as module:
        return torch.cat([p.detach().float().reshape(-1).clone() for p in module.parameters()])


def main() -> None:
    cases, out_dir = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    register_schema()
    dist.init()
    for name, overrides in cases.items():
        run_case(overrides, out_dir / f"{name}.pt")


def run_case(overrides: list[str], out: Path) -> None:
    uniform_groups = "--uniform-groups" in overrides  # two groups with one outcome throughout (no advantage)
    overrides = [o for o in overrides if o != "--uniform-groups"]
    with initialize_config_dir(config_dir=f"{REPO}/prm_rl/recipes", version_base=None):
        cfg = to_config(compose(config_name="base", overrides=["+recipe=math_ppo", *overrides]))
    tok = build_char_tokenizer(arithmetic.CHARACTERS)
    tiny = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=32)
    k = cfg.rollout.samples_per_prompt
    batch = fixed_batch(cfg.rollout.prompts_per_step * k, len(tok), tok.eos_token_id, k,
                        tok.convert_tokens_to_ids("\n"))
    scores = (torch.rand(len(batch), generator=torch.Generator().manual_seed(3)) < 0.5).float()
    if uniform_groups:  # a group all right and one all wrong, every other group mixed
        scores[:k], scores[k:2 * k] = 1.0, 0.0
        scores[2 * k::k] = 1.0 - scores[2 * k + 1::k]

    ds, dtype = cfg.deepspeed, cfg.model.dtype

    def model(seed: int, trained: bool = True) -> torch.nn.Module:
        """The tiny model as load_causal_lm would hand it over under model.dtype / gradient_checkpointing."""
        built = build_tiny_model(tiny, tok, seed=seed).to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        if trained and cfg.model.gradient_checkpointing:
            built.gradient_checkpointing_enable()
        return built

    # LoRA (model.lora / prm.lora): the adapted roles are views of one base, model(0), and so is the reference
    adapters = lora_adapters(cfg.model, cfg.prm)
    shared = SharedBase(model(0), adapters, seed=0) if adapters else None
    policy = trainable_engine(shared.view("policy") if "policy" in adapters else model(0), ds, dtype=dtype,
                              lr=cfg.policy.learning_rate, weight_decay=cfg.policy.weight_decay,
                              grad_clip=cfg.policy.grad_clip)
    prm = trainable_engine(shared.view("prm") if "prm" in adapters else model(0), ds, dtype=dtype,
                           lr=cfg.prm.learning_rate, weight_decay=cfg.prm.weight_decay, grad_clip=cfg.prm.grad_clip)
    offload_ref = cfg.model.offload_reference
    ref = frozen_model(shared.view(None) if shared else model(1, trained=False), ds, dtype=dtype, offload=offload_ref)
    initial = flat_weights(policy)
    lora_before = lora_parts(shared, policy, prm) if shared else {}

    models = stages.Models(policy, prm, ref, tok, synced_generation=False, offload_reference=offload_ref)
    result = learn(models, batch, scores, LearnSections.of(cfg), stages.step_end_table(tok, "\n"),
                   torch.Generator().manual_seed(0))

    # The log-ratios of the PRM as it is after the step: prm.update=before must have rewarded with exactly these.
    ref_logp = stages.logprob_stage(ref, batch, cfg.policy.micro_batch_size)
    rescored = stages.implicit_log_ratio_stage(prm, batch, ref_logp, cfg.prm.micro_batch_size)
    weights = {name: flat_weights(engine) for name, engine in (("policy", policy), ("prm", prm))}
    if result.old_logp is None:  # on-policy: learn skipped the old-log-prob pass; a twin takes it, same update
        twin = trainable_engine(model(0), ds, dtype=dtype, lr=cfg.policy.learning_rate,
                                weight_decay=cfg.policy.weight_decay, grad_clip=cfg.policy.grad_clip)
        t = cfg.rollout.temperature
        old_logp = stages.logprob_stage(twin, batch, cfg.policy.micro_batch_size, t)
        stages.policy_update_stage(twin, batch, old_logp, result.advantages, ref_logp, cfg.policy, cfg.rollout,
                                   torch.Generator().manual_seed(0))
        weights["policy_with_old_pass"] = flat_weights(twin)
    if shared:
        weights["lora"] = {"before": lora_before, "after": lora_parts(shared, policy, prm),
                           "ref_logp": ref_logp, "base_logp": base_logp(model(0), batch, cfg.policy.micro_batch_size)}
    if dist.is_main():
        metrics = {k: v for k, v in result.metrics.items() if not k.startswith(("time/", "mem/"))}
        torch.save({"old_logp": result.old_logp, "log_ratio": result.log_ratio, "advantages": result.advantages,
                    "rescored": rescored, "metrics": metrics, "initial": initial, **weights}, out)


def lora_parts(shared: SharedBase, policy, prm) -> dict:
    """The base's weights and each adapter's (full, gathered), and whether each engine's optimiser holds exactly
    its own adapter's parameters."""
    with full_parameters(policy if "policy" in shared.roles else prm):  # a view: the whole shared model
        named = dict(shared.model.named_parameters())
        parts = {"base": {n: p.detach().clone() for n, p in named.items() if ADAPTER_PREFIX not in n}}
        for role in shared.roles:
            own = {id(p) for p in shared.adapter_parameters(role)}
            parts[role] = {n: p.detach().clone() for n, p in named.items() if id(p) in own}
    for role, engine in (("policy", policy), ("prm", prm)):
        if role in shared.roles:
            held = {id(p) for p in optimised_parameters(engine)}
            parts[f"{role}_optimiser_holds_own_adapter"] = held == {id(p) for p in shared.adapter_parameters(role)}
    return parts


def optimised_parameters(engine) -> list[torch.nn.Parameter]:
    """The module parameters an engine's optimiser updates (ZeRO-1/2 keep them in bit16_groups, ZeRO-3 in
    fp16_groups, the bf16 wrapper in bf16_groups; a plain optimiser in its param groups)."""
    opt = engine.optimizer
    for attribute in ("bit16_groups", "fp16_groups", "bf16_groups"):
        if hasattr(opt, attribute):
            return [p for group in getattr(opt, attribute) for p in group]
    return [p for group in opt.param_groups for p in group["params"]]


def base_logp(model: torch.nn.Module, batch: Rollout, micro_batch_size: int) -> torch.Tensor:
    """Response log-probs of a plain copy of the starting model: what a reference with the adapters off must give."""
    return stages.logprob_stage(frozen_model(model, Config().deepspeed, dtype="float32"), batch, micro_batch_size)


if __name__ == "__main__":
    main()
