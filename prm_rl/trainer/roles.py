"""The models a run trains and reads, loaded from the starting checkpoint: full copies, or LoRA views of one base.

With ``model.lora.r = prm.lora.r = 0`` (the default) the policy, the PRM and the reference are three separate
copies of the checkpoint. With either rank > 0 the checkpoint is loaded once, frozen, and that role becomes an
adapter on it (prm_rl.models.lora); the reference is then the same base with the adapters off, never a copy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prm_rl.config import ModelSection, PrmSection
from prm_rl.models.loading import load_causal_lm
from prm_rl.models.lora import SharedBase, lora_adapters


@dataclass
class RoleModels:
    policy: torch.nn.Module | None  # None: the job trains no policy (offline PRM training)
    prm: torch.nn.Module | None  # None: the advantage estimator uses no PRM
    ref: torch.nn.Module | None  # None: nothing reads the reference
    shared: SharedBase | None  # the LoRA base the views share; None when no role is an adapter


def load_role_models(checkpoint: str, model: ModelSection, prm: PrmSection, *, policy: bool, uses_prm: bool,
                     reference: bool, seed: int, log=print) -> RoleModels:
    """Bare modules for each role the run needs (``policy``, ``uses_prm``, ``reference``), ready for DeepSpeed;
    ``seed`` draws the adapters' initial weights; ``log`` gets one line on the shared base when there is one."""
    adapters = lora_adapters(model, prm, policy=policy, uses_prm=uses_prm)
    shared = None
    if adapters:
        shared = SharedBase(load_causal_lm(checkpoint, model.dtype, model.gradient_checkpointing,
                                           attn_implementation=model.attn_implementation), adapters, seed)
        log(shared.describe())

    def role(name: str, wanted: bool, path: str) -> torch.nn.Module | None:
        if not wanted:
            return None
        if name in adapters:
            return shared.view(name)
        return load_causal_lm(path, model.dtype, model.gradient_checkpointing,
                              attn_implementation=model.attn_implementation)

    ref = None
    if reference:
        ref = shared.view(None) if shared else load_causal_lm(checkpoint, model.dtype,
                                                              attn_implementation=model.attn_implementation)
    return RoleModels(policy=role("policy", policy, checkpoint), prm=role("prm", uses_prm, prm.init_path or checkpoint),
                      ref=ref, shared=shared)
