"""One frozen base model for the policy, the implicit PRM and the reference: LoRA adapters (PEFT).

PRIME's three models start from one SFT checkpoint. With ``model.lora.r > 0`` the policy is that checkpoint plus
a LoRA adapter named ``policy``; with ``prm.lora.r > 0`` the PRM is the same checkpoint plus an adapter named
``prm``; the frozen reference is the checkpoint with every adapter off. :class:`SharedBase` holds the one copy of
the base weights with the adapters injected; :class:`AdapterView` is that model seen as one role (a module whose
forward and generate run with its adapter on), which is what DeepSpeed wraps and the trainer calls.

Views switch the adapter before each call, so a role's forward must not be interleaved with another role's
backward (with gradient checkpointing the backward recomputes the forward with the adapter active at that time);
the step runs each role's forward and backward together (prm_rl.trainer.step).
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from prm_rl.config import ConfigError, LoraSection, ModelSection, PrmSection

ADAPTER_PREFIX = "lora_"  # PEFT's adapter parameters are named lora_A.<adapter>, lora_B.<adapter>, ...
BASE_LAYER = ".base_layer"  # PEFT wraps each targeted layer; the original weight sits under this name


def lora_adapters(model: ModelSection, prm: PrmSection, *, policy: bool = True,
                  uses_prm: bool = True) -> dict[str, tuple[str, LoraSection]]:
    """The roles that are LoRA adapters (``r > 0``, among those the run has): role -> (its option, its settings)."""
    adapters = {}
    if policy and model.lora.r:
        adapters["policy"] = ("model.lora", model.lora)
    if uses_prm and prm.lora.r:
        adapters["prm"] = ("prm.lora", prm.lora)
    return adapters


class SharedBase:
    """A Hugging Face causal LM with one LoRA adapter per trained role (``{"policy": ..., "prm": ...}``).

    The base weights are frozen; every adapter parameter stays trainable (``requires_grad``) whichever adapter is
    active, so each role's DeepSpeed engine sees a fixed set of parameters: its own adapter's.
    """

    def __init__(self, model: torch.nn.Module, adapters: dict[str, tuple[str, LoraSection]], seed: int = 0):
        """``adapters``: role -> (the option that configures it, e.g. ``model.lora``; its settings). ``seed``
        draws the adapters' initial A matrices (B starts at 0: every role starts as the base), the same on every
        rank and apart from the run's other random streams."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._inject(model, adapters)
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model = self.peft_model.base_model.model  # the HF model, LoRA layers inside: HF's forward signature
        self.layers = {name: m for name, m in self.model.named_modules() if isinstance(m, BaseTunerLayer)}
        self.roles = tuple(adapters)
        self._adapters = {role: [p for n, p in self.model.named_parameters()
                                 if ADAPTER_PREFIX in n and f".{role}." in f"{n}."] for role in self.roles}
        self.dropout = {role: lora.dropout for role, (_, lora) in adapters.items()}
        self.active: str | None = "unset"
        self._keep_adapters_trainable()
        if getattr(self.model, "is_gradient_checkpointing", False):
            # the base's embeddings are frozen: checkpointed blocks need an input that requires grad
            self.model.enable_input_require_grads()

    def _inject(self, model: torch.nn.Module, adapters: dict[str, tuple[str, LoraSection]]) -> None:
        import peft

        self.peft_model = None
        for role, (option, lora) in adapters.items():
            _check_targets(model, option, lora.target_modules)
            config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                                     target_modules=_targets(lora.target_modules), task_type="CAUSAL_LM")
            try:
                if self.peft_model is None:
                    self.peft_model = peft.get_peft_model(model, config, adapter_name=role)
                else:
                    self.peft_model.add_adapter(role, config)
            except ValueError as err:  # PEFT: "Target modules {...} not found in the base model..."
                raise ConfigError(f"{option}.target_modules={list(lora.target_modules)}: "
                                  f"{str(err).splitlines()[0]}") from None

    def describe(self) -> str:
        """One line for the run's log: each adapter's size against the base's."""
        base = sum(p.numel() for n, p in self.model.named_parameters() if ADAPTER_PREFIX not in n)
        sizes = ", ".join(f"{role} {sum(p.numel() for p in self.adapter_parameters(role)) / 1e6:.2f}M"
                          for role in self.roles)
        return (f"LoRA: one frozen base of {base / 1e6:.2f}M parameters (also the reference); adapters: {sizes} "
                f"on {len(self.layers)} layers")

    def adapter_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """The parameters of ``role``'s adapter (what its optimiser updates)."""
        return list(self._adapters[role])

    def select(self, role: str | None) -> None:
        """Make ``role``'s adapter the active one (None: every adapter off, the frozen base alone).

        The adapter's dropout (``*.lora.dropout``) is on in forwards that compute gradients (the updates) and off
        in the others (sampling, old and reference log-probs), whatever train/eval mode the model is in.
        """
        training = torch.is_grad_enabled()
        if role is not None and self.dropout[role]:
            for layer in self.layers.values():
                if role in layer.lora_dropout:
                    layer.lora_dropout[role].train(training)
        if role == self.active:
            return
        for layer in self.layers.values():
            if role is None:
                layer.enable_adapters(False)
            else:
                layer.set_adapter(role)
                layer.enable_adapters(True)
        self._keep_adapters_trainable()
        self.active = role

    def _keep_adapters_trainable(self) -> None:
        """PEFT's switches freeze the inactive adapters (and add_adapter the new one); here every adapter stays
        trainable, so that each engine's set of parameters never changes under it."""
        for role in self.roles:
            for p in self.adapter_parameters(role):
                p.requires_grad_(True)

    def view(self, role: str | None) -> "AdapterView":
        return AdapterView(self, role)


class AdapterView(torch.nn.Module):
    """The shared model as one role: ``forward`` and ``generate`` run with ``role``'s adapter (None: the base).

    Its forward carries the HF model's signature (the decode loop reads it). Its parameters are the whole shared
    model's; :meth:`trainable_parameters` are the role's adapter's.
    """

    def __init__(self, shared: SharedBase, role: str | None):
        super().__init__()
        self.shared_model = shared.model
        self.role = role
        self.config = shared.model.config
        object.__setattr__(self, "_shared", shared)  # not a submodule: no second path to the parameters

        @functools.wraps(shared.model.forward)
        def forward(*args, **kwargs):
            shared.select(role)
            return shared.model(*args, **kwargs)

        self.forward = forward

    def generate(self, *args, **kwargs):
        self._shared.select(self.role)
        return self.shared_model.generate(*args, **kwargs)

    @property
    def generation_config(self):
        return self.shared_model.generation_config

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [] if self.role is None else self._shared.adapter_parameters(self.role)

    def merged_named_parameters(self, gathered: Callable[[list], ContextManager] = lambda params: nullcontext()
                                ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(Hugging Face name, weight)`` of the model this role computes, one at a time: base weight + (alpha/r) B A
        on each adapted layer, computed aside (the base is never modified, so it stays bitwise the same); tied
        weights under each of their names. ``gathered(params)``: a context in which ``params`` are whole (ZeRO-3)."""
        for name, parameter in self.shared_model.named_parameters(remove_duplicate=False):
            if ADAPTER_PREFIX in name:
                continue
            layer_name, _, leaf = name.rpartition(".")
            layer = self._shared.layers.get(layer_name.removesuffix(BASE_LAYER))
            adapted = self.role is not None and leaf == "weight" and layer is not None and self.role in layer.lora_A
            parts = [parameter]
            if adapted:
                parts += [layer.lora_A[self.role].weight, layer.lora_B[self.role].weight]
            with gathered(parts):
                weight = parameter.detach()
                if adapted:
                    weight = weight + layer.get_delta_weight(self.role).to(weight.dtype)
                yield name.replace(BASE_LAYER + ".", "."), weight.clone()

    def save_pretrained(self, directory: str | Path, **kwargs) -> None:
        """A plain Hugging Face checkpoint of this role's merged weights (``from_pretrained`` loads it)."""
        merged = dict(self.merged_named_parameters())
        self.shared_model.save_pretrained(directory, state_dict=merged, **kwargs)

    def save_adapter(self, directory: str | Path) -> Path:
        """The adapter alone in PEFT's format, as ``directory/<role>/`` (``PeftModel.from_pretrained`` loads it)."""
        self._shared.peft_model.save_pretrained(str(directory), selected_adapters=[self.role])
        return Path(directory) / self.role


def check_targets_of(config, adapters: dict[str, tuple[str, LoraSection]]) -> None:
    """Before anything loads: each adapter's ``target_modules`` (:func:`lora_adapters`) name modules of the model
    ``config`` describes (its skeleton is built on the meta device: no weights, no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    for option, lora in adapters.values():
        _check_targets(skeleton, option, lora.target_modules)


def _check_targets(model: torch.nn.Module, option: str, modules: list[str]) -> None:
    """Every named target must be a module of ``model`` (PEFT itself only fails when none is)."""
    names = [name for name, _ in model.named_modules()]
    for key in modules:
        if key != "all-linear" and not any(n == key or n.endswith("." + key) for n in names):
            linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ConfigError(f"{option}.target_modules={list(modules)}: the model has no module {key!r} "
                              f"(its linear layers: {', '.join(linear)})")


def _targets(modules: list[str]) -> str | list[str]:
    """PEFT takes the shorthand ``all-linear`` as a string, names as a list."""
    return "all-linear" if list(modules) == ["all-linear"] else list(modules)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What an optimiser of ``model`` updates: a view's adapter, else every parameter."""
    if isinstance(model, AdapterView):
        return model.trainable_parameters()
    return list(model.parameters())
