"""DeepSpeed engines for the trained models (policy, PRM) and the frozen reference.

One DeepSpeed JSON is derived per model from the typed config; nothing else in prm_rl builds one.
The trainer drives gradient accumulation itself (a varying number of micro-batches per optimiser step,
because the online filter changes the batch size), so the JSON says ``gradient_accumulation_steps: 1``
and :func:`backward_and_step` marks the accumulation boundary explicitly.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import deepspeed
import torch

from prm_rl.config import DeepSpeedSection
from prm_rl.engine import dist
from prm_rl.models.lora import AdapterView, trainable_parameters


def deepspeed_config(ds: DeepSpeedSection, *, dtype: str, grad_clip: float | None,
                     lr: float | None = None, weight_decay: float = 0.0) -> dict[str, Any]:
    """The DeepSpeed JSON for one model; ``grad_clip``/``lr`` None means a frozen (inference-only) model."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # nominal: the trainer sizes micro-batches itself
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        # check_grad_overflow: skip an update whose gradients hold NaN/inf (fp32 ZeRO does so by default).
        "bf16": {"enabled": dtype == "bfloat16", "check_grad_overflow": True},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if grad_clip is not None:
        config["gradient_clipping"] = grad_clip
    if lr is not None and ds.offload:
        # Offloaded optimiser states need DeepSpeed's CPU Adam, which it builds from this entry.
        config["optimizer"] = {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay}}
    return config


def trainable_engine(model: torch.nn.Module, ds: DeepSpeedSection, *, dtype: str, lr: float,
                     weight_decay: float, grad_clip: float):
    """Wrap a model for training: AdamW, constant learning rate, ZeRO stage from config. A LoRA view's optimiser
    holds its adapter only (the frozen base and the other role's adapter are in the module, not in the optimiser)."""
    config = deepspeed_config(ds, dtype=dtype, grad_clip=grad_clip, lr=lr, weight_decay=weight_decay)
    parameters = trainable_parameters(model)
    optimizer = None
    if "optimizer" not in config:
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=parameters, config=config)
    return engine


def set_optimizer_hyperparameters(engine, *, lr: float, weight_decay: float) -> None:
    """Put the config's learning rate and weight decay into every parameter group.

    Loading a checkpoint restores the optimiser's saved groups, hyper-parameters included; a resume that changed
    them in the config would otherwise train on at the old values. (Gradient clipping is read from the DeepSpeed
    config at engine start, so it follows the config already.)
    """
    for group in engine.optimizer.param_groups:
        group["lr"], group["weight_decay"] = lr, weight_decay


def frozen_model(model: torch.nn.Module, ds: DeepSpeedSection, *, dtype: str,
                 offload: bool = False) -> torch.nn.Module:
    """A reference model that is never trained: sharded by ZeRO-3 when the run uses stage 3, else replicated
    (``offload``: kept in host memory, see :func:`resident`). A LoRA view of the base is returned as it is: its
    weights are the trained roles' engines' (already placed by them), its adapters theirs to train."""
    if isinstance(model, AdapterView):
        return model
    model.requires_grad_(False)
    model.eval()
    if ds.zero_stage == 3 and dist.world_size() > 1:
        engine, *_ = deepspeed.initialize(model=model, config=deepspeed_config(ds, dtype=dtype, grad_clip=None))
        engine.eval()
        return engine
    dtype_t = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    return model.to(device="cpu" if offload else dist.device(), dtype=dtype_t)


def release_cached_memory() -> None:
    """Hand the memory PyTorch's allocator keeps cached (e.g. a finished generation's KV cache blocks) back to
    the GPU, for the next stage or another process (``rollout.release_cache``); nothing to do on CPU."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def resident(model: torch.nn.Module | None, offload: bool) -> Iterator[torch.nn.Module | None]:
    """``model`` on the compute device for the ``with`` block, back in host memory after it when ``offload``.

    The frozen reference is read once per step (and at evaluations); between those reads its memory is the
    updates' (``model.offload_reference``). A ZeRO-3 engine shards itself and is left alone.
    """
    if model is None or not offload or isinstance(model, (deepspeed.DeepSpeedEngine, AdapterView)) or \
            dist.device().type == "cpu":
        yield model
        return
    model.to(dist.device())
    try:
        yield model
    finally:
        model.to("cpu")


def backward_and_step(engine, loss: torch.Tensor, is_last_micro_batch: bool) -> bool:
    """Accumulate ``loss``'s gradient; on the last micro-batch clip and take the optimiser step.

    Returns False when the step was skipped because the (globally reduced) gradients hold NaN/inf: ZeRO
    stages 1-3 detect that themselves and zero the gradients; at stage 0 it is checked here. The loss is
    not divided by the accumulation count: the trainer already normalises by global denominators (see
    ``prm_rl.core.policy_loss.aggregate``).
    """
    engine.set_gradient_accumulation_boundary(is_last_micro_batch)
    engine.backward(loss, scale_wrt_gas=False)
    if not is_last_micro_batch:
        engine.step()  # not a boundary: DeepSpeed only advances its micro-step counter
        return True
    if engine.zero_optimization_stage() == 0:
        _stage0_norms[engine] = norm = _gradient_norm(engine.module)  # DeepSpeed records none at stage 0
        if not math.isfinite(norm):
            engine.optimizer.zero_grad(set_to_none=True)
            return False
    engine.step()
    return engine.was_step_applied()


_stage0_norms: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()


def _gradient_norm(module: torch.nn.Module) -> float:
    """The 2-norm of all of ``module``'s gradients (all-reduced already at stage 0); NaN/inf if any is."""
    grads = [p.grad.float() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def grad_norm(engine) -> float:
    """Global gradient norm of the last optimiser step (before clipping)."""
    norm = engine.get_global_grad_norm()
    if norm is None:
        norm = _stage0_norms.get(engine)
    return float(norm) if norm is not None else float("nan")


def unwrap(model) -> torch.nn.Module:
    return getattr(model, "module", model)


@contextmanager
def full_parameters(model) -> Iterator[torch.nn.Module]:
    """The underlying HF module with full (gathered) parameters, for saving or generation under ZeRO-3."""
    module = unwrap(model)
    stage = model.zero_optimization_stage() if hasattr(model, "zero_optimization_stage") else 0
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield module
    else:
        yield module


def _zero3(model) -> bool:
    return hasattr(model, "zero_optimization_stage") and model.zero_optimization_stage() == 3


@contextmanager
def gathered(model, parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """``parameters`` of ``model`` whole for the ``with`` block (ZeRO-3 gathers them collectively; else a no-op)."""
    with deepspeed.zero.GatheredParameters(parameters, modifier_rank=None, enabled=_zero3(model)):
        yield


def host_weights(model) -> dict[str, torch.Tensor]:
    """The underlying HF module's weights (parameters and persistent buffers) in host memory on rank 0, empty on the
    other ranks. Collective: under ZeRO-3 every rank gathers each parameter in turn, so no device holds more than
    one whole parameter beyond its shard (gathering the whole model at once would need its full size free on every
    GPU). A tied weight comes once; a LoRA view gives its merged weights (:func:`full_named_parameters`)."""
    module = unwrap(model)
    main = dist.is_main()
    weights = {name: tensor.cpu() for name, tensor in full_named_parameters(model, remove_duplicate=True) if main}
    if main and not isinstance(module, AdapterView):  # a view's buffers are named through PEFT's wrappers
        persistent = module.state_dict().keys()  # under ZeRO-3 the parameters in it are empty: cheap to list
        weights |= {name: buffer.cpu() for name, buffer in module.named_buffers() if name in persistent}
    return weights


def full_named_parameters(model, remove_duplicate: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every parameter of the underlying HF module, one at a time: under ZeRO-3 each
    is gathered (collectively: every rank must walk the whole iterator) and copied out, so at most one full
    parameter more than the shard is held. Names are Hugging Face's, as a checkpoint holds them: a tied weight
    comes under each of its names (an inference engine may hold a separate copy of ``lm_head.weight``; with
    ``remove_duplicate`` once, as a checkpoint stores it). A LoRA view gives the weights it computes with: base +
    its adapter, merged aside (tied weights under each name)."""
    module = unwrap(model)
    if isinstance(module, AdapterView):
        yield from module.merged_named_parameters(lambda params: gathered(model, params))
        return
    for name, parameter in module.named_parameters(remove_duplicate=remove_duplicate):
        with gathered(model, [parameter]):
            yield name, parameter.detach().clone()
