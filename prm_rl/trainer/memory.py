"""Per-rank memory of a PRIME run, estimated from its config before any model loads.

Per model (policy; PRM when the estimator uses one; the frozen reference when :attr:`Config.needs_reference`; each
reward model of ``verifier.tasks``),
the bytes each term takes on one rank, and the rank's total: on the device (the GPU) and on the host (what
ZeRO-Offload moves to CPU memory). The trainer warns with :func:`launch_warning` before its models load; the
command ``python -m prm_rl.cli.estimate`` prints :func:`table` (docs/benchmarks.md).

Notation: ``n`` parameters of one model, ``P`` bytes per element of ``model.dtype`` (4 float32, 2 bfloat16),
``W`` ranks, ZeRO stage ``z``. The terms of one model, each a function below:

- held for the run: parameters, optimiser (AdamW's ``exp_avg``/``exp_avg_sq`` and DeepSpeed's fp32 master copy),
  at stage 3 the gathered parameters DeepSpeed keeps, and at stage 3 the gradients and the reduce bucket;
- transient, one at a time (a rank's peak is everything held plus the largest transient of any one model): an
  update, i.e. gradients and reduce bucket (below stage 3 DeepSpeed allocates them per update and frees them after
  the step) with either the ``activations`` of the largest micro-batch forward/backward or the optimiser ``step``'s
  fp32 temporaries; or a generation's ``kv_cache``.

With ``rollout.engine=vllm`` a rank also holds a vLLM engine (:class:`VllmMemory`), and its peak is the larger of
two phases: vLLM sampling (everything held + vLLM's reservation) and the trainer's own work (everything held + the
largest transient + vLLM's reservation if it stays awake, ``sleep_level`` 0). The policy then has no generation of
its own: vLLM samples its rollouts, held-out accuracy and PRM evaluation (the reference still samples its held-out
responses once, with the trainer's own decode loop).

The DeepSpeed details were read in its source (0.19: runtime/engine.py, zero/stage_1_and_2.py, zero/stage3.py) and
checked against the resident memory of CPU runs (bench/memory.py, docs/benchmarks/memory.md), where each term was
seen except the reduce bucket's untouched pages.

What it leaves out: the process itself (CUDA context, allocator fragmentation, on CPU the Python/torch/DeepSpeed
baseline: measured in docs/benchmarks/memory.md), the rollout's small index tensors, gradients of activations
beyond the logits' and one layer's, and vLLM's CUDA graphs when ``kv_cache_gib`` is set (within its share
otherwise). Activations assume Hugging Face's ``sdpa`` attention (no ``[L, L]`` attention matrix per head is kept)
and Llama-style decoders (llama, mistral, qwen2, qwen3).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from prm_rl.config import Config
from prm_rl.core.logprobs import _CHUNK_ELEMENTS as LOGIT_CHUNK  # rows of fp32 temporaries over the vocabulary
from prm_rl.errors import UsageError

GIB = 2**30

# DeepSpeed defaults the engines keep (prm_rl/engine/deepspeed_engine.py sets none of them), in elements.
REDUCE_BUCKET = 500_000_000  # zero_optimization.reduce_bucket_size: one gradient staging buffer per trained model
MAX_LIVE = 1_000_000_000  # zero_optimization.stage3_max_live_parameters: gathered parameters kept at stage 3
LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")


class EstimateError(UsageError):
    """The model's size cannot be read (an unsupported architecture, an unreadable config.json)."""

    label = "estimate"


# ------------------------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on."""

    vocab: int  # V: embedding rows (config.vocab_size)
    hidden: int  # h: residual width
    layers: int  # decoder blocks
    heads: int  # H: query heads
    kv_heads: int  # key/value heads (grouped-query attention when < heads)
    head_dim: int  # d: width of one head
    intermediate: int  # i: MLP width
    tied: bool  # lm_head shares the embedding matrix
    qkv_bias: bool = False  # q/k/v projections carry biases (qwen2; llama/qwen3 with attention_bias)
    o_bias: bool = False  # the output projection carries one (llama/qwen3 with attention_bias)
    mlp_bias: bool = False  # gate/up/down carry biases (llama with mlp_bias)
    qk_norm: bool = False  # RMSNorm over each head's queries and keys (qwen3)


def shape_from_hf(config) -> ModelShape:
    """The shape of a transformers ``PretrainedConfig`` (from ``AutoConfig``) of a Llama-style decoder."""
    kind = getattr(config, "model_type", None)
    if kind not in LLAMA_STYLE:
        raise EstimateError(f"model_type {kind!r}: only Llama-style decoders ({', '.join(LLAMA_STYLE)}) can be "
                            "sized from their config")
    heads = config.num_attention_heads
    attention_bias = bool(getattr(config, "attention_bias", False))
    return ModelShape(vocab=config.vocab_size, hidden=config.hidden_size, layers=config.num_hidden_layers,
                      heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                      intermediate=config.intermediate_size, tied=bool(config.tie_word_embeddings),
                      qkv_bias=kind == "qwen2" or attention_bias, o_bias=kind != "qwen2" and attention_bias,
                      mlp_bias=bool(getattr(config, "mlp_bias", False)), qk_norm=kind == "qwen3")


def shape_of_tiny(tiny, vocab: int) -> ModelShape:
    """The built-in model ``model.tiny.*`` as ``prm_rl.models.tiny.build_tiny_model`` builds it: as many key/value
    heads as heads, tied embeddings, no biases."""
    return ModelShape(vocab=vocab, hidden=tiny.hidden_size, layers=tiny.num_layers, heads=tiny.num_heads,
                      kv_heads=tiny.num_heads, head_dim=tiny.hidden_size // tiny.num_heads,
                      intermediate=tiny.intermediate_size, tied=True)


def builtin_vocab(cfg: Config) -> int:
    """Tokens of the built-in task's character tokenizer (special tokens + the task's CHARACTERS)."""
    from prm_rl.data.prompts import BUILTIN_TASKS
    from prm_rl.models.tiny import build_char_tokenizer

    return len(build_char_tokenizer(BUILTIN_TASKS[cfg.task.name][1].CHARACTERS))


def hf_config(path: str, option: str):
    """``AutoConfig`` of the checkpoint ``path`` (config.json alone; a Hub id fetches just that), or
    :class:`EstimateError` naming ``option``."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise EstimateError(f"{option}={path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def model_shape(cfg: Config) -> ModelShape:
    """The starting model's shape: ``model.path``'s config.json (the one file this module reads), or the built-in
    model. The PRM (also from ``prm.init_path``) and the reference are taken to have the same shape."""
    if cfg.model.path is None:
        return shape_of_tiny(cfg.model.tiny, builtin_vocab(cfg))
    return shape_from_hf(hf_config(cfg.model.path, "model.path"))


def param_count(s: ModelShape) -> int:
    """Parameters: embedding ``[V, h]``; per layer q ``[h, H d]``, k and v ``[h, kv d]``, o ``[H d, h]`` (and their
    biases), MLP gate and up ``[h, i]``, down ``[i, h]`` (and biases), two RMSNorms ``[h]`` (and q/k norms
    ``[d]``); a final RMSNorm ``[h]``; the lm_head ``[V, h]`` unless tied."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attention = s.hidden * (q + 2 * kv) + q * s.hidden
    attention += (q + 2 * kv) * s.qkv_bias + s.hidden * s.o_bias + 2 * s.head_dim * s.qk_norm
    mlp = 3 * s.hidden * s.intermediate + (2 * s.intermediate + s.hidden) * s.mlp_bias
    layer = attention + mlp + 2 * s.hidden
    return s.vocab * s.hidden * (1 if s.tied else 2) + s.layers * layer + s.hidden


# Llama-style linear layers by PEFT target name: (fan-in, fan-out) as functions of the shape
LINEAR = {
    "q_proj": lambda s: (s.hidden, s.heads * s.head_dim), "k_proj": lambda s: (s.hidden, s.kv_heads * s.head_dim),
    "v_proj": lambda s: (s.hidden, s.kv_heads * s.head_dim), "o_proj": lambda s: (s.heads * s.head_dim, s.hidden),
    "gate_proj": lambda s: (s.hidden, s.intermediate), "up_proj": lambda s: (s.hidden, s.intermediate),
    "down_proj": lambda s: (s.intermediate, s.hidden),
}


def adapter_param_count(s: ModelShape, lora, option: str) -> int:
    """Parameters of one LoRA adapter: ``A [r, fan-in]`` and ``B [fan-out, r]`` on each targeted linear layer of
    every block (``all-linear``: all seven of them; PEFT leaves the lm_head out)."""
    names = list(LINEAR) if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    unknown = [n for n in names if n not in LINEAR]
    if unknown:
        raise EstimateError(f"{option}.target_modules: {unknown[0]!r} is not a Llama-style linear layer the estimate "
                            f"knows ({', '.join(LINEAR)})")
    return s.layers * sum(lora.r * sum(LINEAR[n](s)) for n in names)


# ------------------------------------------------------------------------------------ the terms, in bytes
@dataclass
class Bytes:
    """One term on one rank: on the accelerator and in host memory (ZeRO-Offload)."""

    device: int = 0
    host: int = 0

    def __add__(self, other: Bytes) -> Bytes:
        return Bytes(self.device + other.device, self.host + other.host)


def where(nbytes: float, host: bool) -> Bytes:
    return Bytes(0, math.ceil(nbytes)) if host else Bytes(math.ceil(nbytes), 0)


def param_bytes(n: int, p: int, stage: int, world: int, offload: bool) -> Bytes:
    """Parameters ``[n]`` in the model dtype: sharded over the ranks at stage 3 (on the host with offload)."""
    return where(n * p / (world if stage == 3 else 1), stage == 3 and offload)


def grad_bytes(n: int, p: int, stage: int, world: int) -> int:
    """This rank's gradients in the model dtype (DeepSpeed accumulates in it): ``[n]`` at stages 0-1, the partition
    ``[n / W]`` from stage 2. At stages 0-2 they exist only while the model updates (DeepSpeed frees them after each
    optimiser step); at stage 3 they are a flat buffer held for the run."""
    return math.ceil(n * p / (world if stage >= 2 else 1))


def has_master(p: int, stage: int) -> bool:
    """DeepSpeed keeps an fp32 master copy of the parameters for bf16 at every stage, and at stages 1-3 also for
    fp32 (its ZeRO optimisers clone their partition: stage_1_and_2.py ``single_partition_of_fp32_groups``,
    stage3.py ``fp32_partitioned_groups_flat``)."""
    return p == 2 or stage >= 1


def optimizer_bytes(n: int, p: int, stage: int, world: int, offload: bool) -> Bytes:
    """AdamW's fp32 ``exp_avg`` and ``exp_avg_sq`` ``[n]`` (8 bytes a parameter) plus the fp32 master weights
    ``[n]`` (4) where :func:`has_master`; with offload also the master partition's fp32 gradient (4), which then
    lives on the host for the whole run. Sharded from stage 1; on the host with offload."""
    per_param = 8 + 4 * has_master(p, stage) + 4 * (offload and stage >= 1)
    return where(n * per_param / (world if stage >= 1 else 1), offload and stage >= 1)


def bucket_bytes(n: int, p: int, stage: int, resident: bool) -> int:
    """DeepSpeed's reduce bucket ``[reduce_bucket_size]`` in the model dtype (trained models, stages 1-3): allocated
    at the first backward of an update and released after its step at stages 1-2, held for the run at stage 3. A GPU
    allocates it whole. ``resident``: what a CPU run's resident memory shows instead (untouched pages of a
    ``torch.empty`` are never mapped): measured (bench/memory.py), no trace of it at stages 1-2 and about the part
    gradients fill, ``min(bucket, n)``, at stage 3."""
    if stage == 0:
        return 0
    if not resident:
        return REDUCE_BUCKET * p
    return min(REDUCE_BUCKET, n) * p if stage == 3 else 0


def step_bytes(n: int, p: int, stage: int, world: int, offload: bool) -> int:
    """Transient at an optimiser step (the model's activations are freed by then): the fp32 gradient AdamW reads
    and AdamW's temporary ``sqrt(exp_avg_sq)``, both ``[n / W]`` fp32 at stages 1-3 (DeepSpeed flattens the rank's
    gradient partition into a new fp32 tensor), ``[n]`` at stage 0 (where fp32 reads the gradients in place, after
    a flat all-reduce copy of them of the same size). With offload DeepSpeed's CPU Adam updates in place: none."""
    if stage >= 1:
        return 0 if offload else math.ceil(8 * n / world)
    return 8 * n if p == 2 else 4 * n


def gathered_bytes(n: int, p: int, stage: int, sharded: bool = True) -> int:
    """Stage 3: full parameters gathered for the forwards, which DeepSpeed keeps until more than
    ``stage3_max_live_parameters`` (1e9) are live or their reuse lies further than ``stage3_max_reuse_distance``
    (1e9 elements) ahead: ``min(n, 1e9)`` elements, taken as held for the run. 0 where parameters are not sharded."""
    return min(n, MAX_LIVE) * p if stage == 3 and sharded else 0


def layer_bytes_per_token(s: ModelShape, p: int) -> int:
    """What autograd keeps of one decoder layer per token (checked against ``saved_tensors_hooks`` in
    tests/unit/test_estimate.py):
    two RMSNorms, each its fp32 input ``[h]``, ``1/rms`` ``[1]``, the normalised and the weighted output ``[h]``
    in the model dtype (4h + 4 + 2hP bytes; in fp32 the normalised one is an fp32 product); attention's q, k, v
    (keys and values repeated to all H heads by the sdpa path) and output ``[H d]`` each, and its fp32
    log-sum-exp ``[H]``; the MLP's gate, up, silu(gate) and their product ``[i]`` each."""
    norms = 2 * (4 * s.hidden + 4 + 2 * s.hidden * p)
    attention = 4 * s.heads * s.head_dim * p + 4 * s.heads
    return norms + attention + 4 * s.intermediate * p


def train_activation_bytes(s: ModelShape, p: int, rows: int, length: int, checkpointing: bool, scored: int) -> int:
    """Peak of one forward/backward over ``rows`` sequences of ``length`` tokens (``t = rows x length``), with
    logits at ``scored`` positions a row (``u = rows x scored``):

    - every layer's :func:`layer_bytes_per_token` x ``t``; with gradient checkpointing only each layer's input
      ``[t, h]`` in the model dtype, plus one layer recomputed in full during the backward;
    - the attention mask ``[rows, 1, length, length]`` in the model dtype, shared by all layers;
    - the final RMSNorm (4h + 4 + 2hP per token) and the token ids (8 per token);
    - the logits ``[u, V]`` and, in the backward, their gradient ``[u, V]`` (model dtype), the fp32 log-sum-exp
      ``[u]`` and the fp32 chunk ``min(u V, LOGIT_CHUNK)`` that ``prm_rl.core.logprobs`` recomputes softmax in;
    - one layer's backward workspace: gradients of the MLP's ``[t, 2i]`` and of the residual ``[t, 2h]``.
    """
    t = rows * length
    layer = layer_bytes_per_token(s, p)
    layers = (s.layers * s.hidden * p + layer) if checkpointing else s.layers * layer
    mask = rows * length * length * p
    head = (4 * s.hidden + 4 + 2 * s.hidden * p + 8) * t
    logits = 2 * logit_bytes(s, p, rows * scored)
    logits += 4 * rows * scored + 4 * min(rows * scored * s.vocab, LOGIT_CHUNK)
    workspace = (2 * s.intermediate + 2 * s.hidden) * p * t
    return layers * t + mask + head + logits + workspace


def forward_activation_bytes(s: ModelShape, p: int, rows: int, length: int, scored: int) -> int:
    """Peak of a forward without gradients (reference and old log-probs): the logits ``[u, V]`` (``u = rows x
    scored``), the fp32 log-sum-exp ``[u]`` and chunk, the mask, and one layer's working set
    (:func:`layer_working_bytes`) over ``t = rows x length`` tokens."""
    t, u = rows * length, rows * scored
    logits = logit_bytes(s, p, u) + 4 * u + 4 * min(u * s.vocab, LOGIT_CHUNK)
    return logits + rows * length * length * p + layer_working_bytes(s, p) * t


def logit_bytes(s: ModelShape, p: int, positions: int) -> int:
    """Logits ``[positions, V]`` in the model dtype. The forwards ask for them only where a response token is
    predicted (``logits_to_keep``, prm_rl/models/forward.py): ``max_new_tokens + 1`` positions a row, not the
    prompt's."""
    return positions * s.vocab * p


def layer_working_bytes(s: ModelShape, p: int) -> int:
    """Per token, what one layer's forward without gradients holds at once: q, k, v and the attention output
    ``[H d]`` each, the MLP's gate, up and product ``[i]`` each, the residual and its normalised copy ``[h]``."""
    return (4 * s.heads * s.head_dim + 3 * s.intermediate + 2 * s.hidden) * p


def kv_cache_bytes(s: ModelShape, p: int, rows: int, length: int) -> int:
    """Hugging Face's generation cache: keys and values of every layer, ``[rows, kv_heads, length, d]`` each,
    in the model dtype."""
    return rows * s.layers * 2 * s.kv_heads * s.head_dim * length * p


# ------------------------------------------------------------------------------------------ vLLM's engine
# Tokens and sequences of one vLLM engine step: vLLM 0.32's defaults for its LLM class (engine/arg_utils.py,
# get_batch_defaults), which the trainer keeps. Its start-up profile run takes activations for a step this size.
VLLM_STEP_LARGE_GPU = (16384, 1024)  # a GPU of 70 GiB or more (H100, H200; an A100 gets the next line's)
VLLM_STEP_GPU = (8192, 256)
VLLM_STEP_CPU = (4096, 256)


@dataclass
class VllmMemory:
    """vLLM's engine on one rank, bytes. vLLM (v1 worker, ``request_memory``) refuses to start unless
    ``gpu_memory_utilization x device memory`` is free beside what the trainer's engines already hold; that share
    then holds its weights, the activations of its profile run, CUDA graphs and, in what is left, its KV cache.
    With ``kv_cache_gib`` set the KV cache is that size instead (``kv_cache_memory_bytes``, which ignores the share
    for sizing), and vLLM holds weights + KV cache + profile run (the start-up check is made all the same)."""

    utilization: float  # rollout.vllm.gpu_memory_utilization
    sleep_level: int  # rollout.vllm.sleep_level, null resolved (:func:`vllm_sleep_level`)
    requested: int  # utilization x device memory: what must be free when vLLM starts (0 on CPU: no such check)
    weights: int  # its own copy of the policy's weights, in the model dtype
    profile: int  # activations of its profile run (:func:`vllm_profile_bytes`)
    kv_cache: int  # its KV cache
    reservation: int  # what it holds while awake: the share, or weights + kv_cache + profile with kv_cache_gib
    sequence_kv: int  # KV cache of one sequence of max_model_len tokens: vLLM will not start with less
    sync: int  # one full parameter, copied for it at each weight sync beside its reservation

    @property
    def held_in_update(self) -> int:
        """Its device bytes while the trainer works: all of them at sleep level 0 (it stays awake), none at 1 and 2
        (level 1 moves the weights to host memory, level 2 drops them; both drop the KV cache)."""
        return self.reservation if self.sleep_level == 0 else 0

    @property
    def host(self) -> int:
        """Host bytes: its weights while asleep at level 1."""
        return self.weights if self.sleep_level == 1 else 0


def vllm_sleep_level(settings, gpu: bool) -> int:
    """``rollout.vllm.sleep_level``; null (auto) is 2 on a GPU and 0 on CPU, where vLLM cannot sleep."""
    level = getattr(settings, "sleep_level", 0)
    return (2 if gpu else 0) if level is None else level


def vllm_step(gpu_bytes: int | None) -> tuple[int, int]:
    """(tokens, sequences) of one vLLM engine step on this device (None: CPU)."""
    if gpu_bytes is None:
        return VLLM_STEP_CPU
    return VLLM_STEP_LARGE_GPU if gpu_bytes >= 70 * GIB else VLLM_STEP_GPU


def vllm_profile_bytes(s: ModelShape, p: int, tokens: int, sequences: int) -> int:
    """Activations of vLLM's start-up profile run (``profile_run``: a forward of one engine step and a sampler run),
    which it keeps free beside weights and KV cache: one layer's working set over the step's tokens and, per
    sequence, the sampler's fp32 logits, probabilities and log-probabilities ``[V]`` each."""
    return tokens * layer_working_bytes(s, p) + 3 * 4 * sequences * s.vocab


def vllm_memory(settings, s: ModelShape, p: int, auto_len: int, gpu_bytes: int | None) -> VllmMemory:
    """vLLM's engine with ``rollout.vllm`` ``settings`` on one rank, on a GPU of ``gpu_bytes`` (None: on CPU, where
    prm_rl/rollout/vllm_engine.py gives it a KV cache of ``kv_cache_gib`` or CPU_KV_CACHE_GIB, and no share).
    ``auto_len``: ``max_model_len`` when that is null (``data.max_prompt_tokens + rollout.max_new_tokens``)."""
    from prm_rl.rollout.vllm_engine import CPU_KV_CACHE_GIB

    gpu = gpu_bytes is not None
    weights = param_count(s) * p
    profile = vllm_profile_bytes(s, p, *vllm_step(gpu_bytes))
    requested = math.ceil(gpu_bytes * settings.gpu_memory_utilization) if gpu else 0
    kv_gib = settings.kv_cache_gib
    if kv_gib is None and not gpu:  # vllm_engine.py's size on CPU, where vLLM has no share to fill
        kv_gib = CPU_KV_CACHE_GIB
    if kv_gib is None:  # the share, filled: the KV cache takes what weights and profile run leave
        kv_cache, reservation = requested - weights - profile, requested
    else:
        kv_cache = int(kv_gib * GIB)  # as vllm_engine.py hands it to vLLM
        reservation = weights + kv_cache + profile
    max_len = getattr(settings, "max_model_len", None) or auto_len
    largest = max(s.vocab, s.intermediate) * s.hidden * p  # the embedding (or lm_head), else an MLP matrix
    return VllmMemory(settings.gpu_memory_utilization, vllm_sleep_level(settings, gpu), requested, weights, profile,
                      kv_cache, reservation, kv_cache_bytes(s, p, 1, max_len), largest)


# ------------------------------------------------------------------------------- batch sizes from the config
def prompt_tokens(cfg: Config) -> int:
    """Longest prompt in tokens: ``data.max_prompt_tokens`` for prompt files (longer ones are dropped), else the
    longest prompt of the built-in task's splits under its character tokenizer."""
    if cfg.data.train is not None:
        return cfg.data.max_prompt_tokens
    from prm_rl.data.prompts import BUILTIN_TASKS, builtin_splits
    from prm_rl.data.sample import encode_prompts
    from prm_rl.models.tiny import build_char_tokenizer

    t = cfg.task
    splits = builtin_splits(t.selected, train_size=t.train_size, eval_size=t.eval_size, seed=t.seed)
    tokenizer = build_char_tokenizer(BUILTIN_TASKS[t.name][1].CHARACTERS)
    return max(len(ids) for ids in encode_prompts(tokenizer, [s.prompt for s in splits.train + splits.eval]))


def capped_rows(rows: int, group: int, max_tokens: int, length: int) -> int:
    """Rows of a micro-batch under a token budget (``prm_rl.trainer.sharding``: rows x longest row <= budget,
    whole groups of ``group``; a group over the budget runs alone)."""
    if max_tokens <= 0:
        return rows
    return min(rows, max(group, (max_tokens // length) // group * group))


def policy_rows(cfg: Config, world: int, length: int) -> int:
    """Rows of the policy's largest micro-batch on one rank: ``policy.micro_batch_size``, at most the rank's share of
    a mini-batch ``ceil(B K / mini_batches / W)``, under ``policy.micro_batch_tokens``."""
    r, pc = cfg.rollout, cfg.policy
    share = math.ceil(math.ceil(r.prompts_per_step * r.samples_per_prompt / pc.mini_batches) / world)
    return capped_rows(min(pc.micro_batch_size, share), 1, pc.micro_batch_tokens, length)


def prm_rows(cfg: Config, world: int, length: int) -> int:
    """Rows of the PRM's largest micro-batch on one rank: whole groups of K, ``prm.micro_batch_size`` rounded down
    to groups (at least one), at most the rank's groups of a mini-batch, under ``prm.micro_batch_tokens``."""
    k, p = cfg.rollout.samples_per_prompt, cfg.prm
    groups = math.ceil(math.ceil(cfg.rollout.prompts_per_step / p.mini_batches) / world)
    return capped_rows(min(max(k, p.micro_batch_size // k * k), groups * k), k, p.micro_batch_tokens, length)


def forward_rows(cfg: Config, world: int, length: int) -> int:
    """Rows of a no-gradient forward (reference, old log-probs): ``policy.micro_batch_size`` over the whole batch."""
    r, pc = cfg.rollout, cfg.policy
    share = math.ceil(r.prompts_per_step * r.samples_per_prompt / world)
    return capped_rows(min(pc.micro_batch_size, share), 1, pc.micro_batch_tokens, length)


def generation_rows(cfg: Config, world: int) -> tuple[int, int]:
    """Rows one rank generates at once: (policy, reference). The policy samples ``B K / W`` rows per step, the
    greedy held-out evaluation ``rollout.eval_batch_size`` (at most the rank's held-out prompts), and the PRM
    evaluation ``prm_eval.num_prompts x samples_per_prompt / W``, which the reference also samples once."""
    r, e = cfg.rollout, cfg.prm_eval
    rollout = r.prompts_per_step * r.samples_per_prompt // world
    heldout = 0
    if cfg.data.train is None:
        heldout = min(r.eval_batch_size, math.ceil(cfg.task.eval_size / world))
    elif cfg.data.eval is not None:
        heldout = r.eval_batch_size
    prm_eval = 0
    if cfg.algorithm.uses_prm and heldout:
        prompts = min(e.num_prompts, cfg.task.eval_size) if cfg.data.train is None else e.num_prompts
        prm_eval = prompts // world * e.samples_per_prompt
    return max(rollout, heldout, prm_eval), prm_eval


# ------------------------------------------------------------------------------------------------ estimate
@dataclass
class ModelMemory:
    """One model's terms on one rank (bytes). Gradients and the reduce bucket are held for the run at ZeRO-3 and
    exist only while the model updates below it; ``gathered`` (stage 3) is held for the run."""

    name: str
    stage: int = 0  # the ZeRO stage of its engine (a frozen reference has no gradients or bucket)
    params: Bytes = field(default_factory=Bytes)
    optimizer: Bytes = field(default_factory=Bytes)
    grads: int = 0
    bucket: int = 0
    gathered: int = 0
    activations: int = 0  # largest micro-batch forward/backward (forward only for the reference)
    step: int = 0
    kv_cache: int = 0

    @property
    def held(self) -> int:
        """Gradient and bucket bytes held for the run (stage 3)."""
        return self.grads + self.bucket if self.stage == 3 else 0

    @property
    def static(self) -> Bytes:
        return self.params + self.optimizer + Bytes(self.gathered + self.held, 0)

    @property
    def transient(self) -> int:
        """Its largest device transient: an update (gradients and bucket below stage 3, with the activations of a
        micro-batch or with the optimiser step) or a generation; they never overlap in time."""
        update = self.grads + self.bucket - self.held
        return max(update + self.activations, update + self.step, self.kv_cache)


@dataclass
class Estimate:
    world_size: int
    params_per_model: int
    tokens_per_row: int  # longest prompt + rollout.max_new_tokens
    models: list[ModelMemory]
    vllm: VllmMemory | None = None  # rollout.engine=vllm

    @property
    def static_device(self) -> int:
        """Device bytes the models hold for the run."""
        return sum(m.static.device for m in self.models)

    @property
    def trainer_phase(self) -> int:
        """Peak of the trainer's own work (updates, forwards, its own generations): everything held, the largest
        transient of any model, and vLLM's bytes if it stays awake."""
        awake = self.vllm.held_in_update if self.vllm else 0
        return self.static_device + max(m.transient for m in self.models) + awake

    @property
    def vllm_phase(self) -> int:
        """Peak while vLLM samples or takes the policy's weights: everything held, its reservation, one parameter
        in transit. 0 without vLLM."""
        return self.static_device + self.vllm.reservation + self.vllm.sync if self.vllm else 0

    @property
    def device(self) -> int:
        """Peak on one rank's device: the larger phase."""
        return max(self.trainer_phase, self.vllm_phase)

    @property
    def host(self) -> int:
        return sum(m.static.host for m in self.models) + (self.vllm.host if self.vllm else 0)


def reward_model_memory(task: str, options, length: int) -> ModelMemory:
    """A reward model of ``verifier.tasks.TASK`` (:mod:`prm_rl.rewards.reward_model`, ``options`` its
    ``RewardModelOptions``): its weights in its checkpoint's dtype, on each rank's device from its first score to the
    end of the run, and the forward of one scoring batch, ``batch_size`` texts of ``max_length`` tokens (unset: the
    run's ``length``, prompt + response counted in the policy's tokens): the mask, one layer's working set and the
    last hidden states, no logits over a vocabulary (one output per position)."""
    option = f"verifier.tasks.{task}.path"
    config = hf_config(options.path, option)
    try:
        s = shape_from_hf(config)
    except EstimateError as err:
        raise EstimateError(f"{option}={options.path}: {err}") from None
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    p = 2 if dtype.removeprefix("torch.") in ("bfloat16", "float16") else 4
    n = param_count(ModelShape(**{**asdict(s), "tied": True})) + s.hidden  # no lm_head; a score head [1, h]
    rows, tokens = options.batch_size, options.max_length or length
    t = rows * tokens
    forward = rows * tokens * tokens * p + layer_working_bytes(s, p) * t + s.hidden * p * t
    return ModelMemory(f"reward model {task}", params=Bytes(n * p, 0), activations=forward)


def estimate(cfg: Config, world_size: int = 1, shape: ModelShape | None = None, resident: bool = False,
             gpu_bytes: int | None = None) -> Estimate:
    """The per-rank memory of a PRIME run of ``cfg`` on ``world_size`` ranks (``shape``: default
    :func:`model_shape`; ``resident``: the resident memory of a CPU run, see :func:`bucket_bytes`; ``gpu_bytes``:
    one GPU's memory, which vLLM takes its share of; None = a CPU run)."""
    s = shape or model_shape(cfg)
    n, p = param_count(s), 2 if cfg.model.dtype == "bfloat16" else 4
    z, w, off = cfg.deepspeed.zero_stage, world_size, cfg.deepspeed.offload
    length = prompt_tokens(cfg) + cfg.rollout.max_new_tokens
    scored = cfg.rollout.max_new_tokens + 1  # positions a row with logits (logit_bytes)
    checkpointing = cfg.model.gradient_checkpointing
    generating, ref_generating = generation_rows(cfg, w)
    vllm = None
    if cfg.rollout.engine == "vllm":  # it samples everything: rollouts, evaluations, the reference's held-out set
        vllm = vllm_memory(cfg.rollout.vllm, s, p, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens, gpu_bytes)
        generating = ref_generating = 0

    def trained(name: str, rows: int, kv_rows: int, lora, option: str) -> ModelMemory:
        """A full model, or (``lora.r > 0``) an adapter: the same terms over its ``a`` parameters, but the
        activations, which run through the whole base (the base's own bytes are the ``base`` row's)."""
        k = adapter_param_count(s, lora, option) if lora.r else n
        return ModelMemory(name, z, param_bytes(k, p, z, w, off), optimizer_bytes(k, p, z, w, off),
                           grads=0 if off and z == 3 else grad_bytes(k, p, z, w),  # offloaded: the host's fp32 ones
                           bucket=bucket_bytes(k, p, z, resident), gathered=0 if lora.r else gathered_bytes(n, p, z),
                           activations=train_activation_bytes(s, p, rows, length, checkpointing, scored),
                           step=step_bytes(k, p, z, w, off), kv_cache=kv_cache_bytes(s, p, kv_rows, length))

    models = [trained("policy", policy_rows(cfg, w, length), generating, cfg.model.lora, "model.lora")]
    if cfg.algorithm.uses_prm:
        models.append(trained("prm", prm_rows(cfg, w, length), 0, cfg.prm.lora, "prm.lora"))
    lora = cfg.model.lora.r or (cfg.algorithm.uses_prm and cfg.prm.lora.r)
    if lora:  # one frozen base under the adapters (and the reference): sharded at stage 3 like a trained model's
        models.append(ModelMemory("base", params=param_bytes(n, p, z, w, off), gathered=gathered_bytes(n, p, z)))
    if cfg.needs_reference and lora:  # the base with the adapters off: its forwards and sampling only
        models.append(ModelMemory("reference", activations=forward_activation_bytes(s, p, forward_rows(cfg, w, length),
                                                                                    length, scored),
                                  kv_cache=kv_cache_bytes(s, p, ref_generating, length)))
    elif cfg.needs_reference:
        # engine/deepspeed_engine.py frozen_model: a ZeRO-3 engine over several ranks, else a plain module, on the
        # device or (model.offload_reference) in host memory, brought to the device for its forwards and sampling
        sharded = z == 3 and w > 1
        offloaded = cfg.model.offload_reference and not sharded
        visiting = n * p if offloaded else 0
        params = Bytes(0, n * p) if offloaded else param_bytes(n, p, 3 if sharded else 0, w, off)
        forward = forward_activation_bytes(s, p, forward_rows(cfg, w, length), length, scored)
        models.append(ModelMemory("reference", params=params, gathered=gathered_bytes(n, p, z, sharded),
                                  activations=visiting + forward,
                                  kv_cache=visiting + kv_cache_bytes(s, p, ref_generating, length)))
    from prm_rl.rewards.scorer import reward_models

    for task, options in reward_models(cfg.verifier.tasks).items():
        models.append(reward_model_memory(task, options, length))
    return Estimate(w, n, length, models, vllm)


def fit_message(est: Estimate, capacity_bytes: int) -> str | None:
    """None when one rank's estimated peak fits in ``capacity_bytes``, else one line with the figures: the peak
    (vLLM's reservation in it) and, where vLLM's share is part of what does not fit, the option that sets it."""
    v = est.vllm
    share = max(v.requested, v.reservation) if v else 0  # vLLM needs the requested share free even when it holds less
    share_short = v is not None and (est.static_device + share > capacity_bytes or est.vllm_phase > capacity_bytes)
    awake_short = v is not None and v.held_in_update > 0 and est.trainer_phase > capacity_bytes
    kv_short = v is not None and v.kv_cache < v.sequence_kv
    if est.device <= capacity_bytes and not share_short and not kv_short:
        return None

    def gib(x: int) -> str:
        return f"{x / GIB:.1f} GiB"

    line = f"estimate: {gib(est.device)} per rank"
    if v is not None:
        line += f" (vLLM's {gib(v.reservation)} included)"
    line += f" does not fit in {gib(capacity_bytes)} ({est.world_size} ranks; python -m prm_rl.cli.estimate shows " \
            "the terms)"
    if share_short or awake_short:
        line += (f"; rollout.vllm.gpu_memory_utilization={v.utilization} takes {gib(share)} beside the "
                 f"{gib(est.static_device)} the trainer's models hold")
        line += ": lower it" if share_short else " and keeps it through the update (sleep_level 0): lower it or sleep"
    if kv_short:
        line += (f"; vLLM's KV cache, {gib(v.kv_cache)} after its weights ({gib(v.weights)}) and profile run "
                 f"({gib(v.profile)}), holds less than one max_model_len sequence ({gib(v.sequence_kv)}): raise "
                 "rollout.vllm.gpu_memory_utilization or set rollout.vllm.kv_cache_gib")
    return line


def check_fits(cfg: Config, world_size: int, capacity_bytes: int, gpu: bool = True) -> str | None:
    """:func:`fit_message` of the estimate on ``world_size`` ranks with ``capacity_bytes`` each: one GPU's memory
    (``gpu``), else a CPU run's share of host memory."""
    return fit_message(estimate(cfg, world_size, gpu_bytes=capacity_bytes if gpu else None), capacity_bytes)


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def machine_capacity(world_size: int) -> int:
    """Bytes one rank may use here: one GPU's memory, or without a GPU the host memory shared by this node's ranks."""
    import torch

    if has_gpu():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    # the DeepSpeed launcher's LOCAL_SIZE, torchrun's LOCAL_WORLD_SIZE; our own CPU ranks are all local
    ranks_here = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(ranks_here, 1)


def launch_warning(cfg: Config, world_size: int) -> str | None:
    """:func:`check_fits` against :func:`machine_capacity`, for the trainer to print before its models load;
    None when the run fits or its model's shape cannot be read (no estimate, no warning)."""
    try:
        return check_fits(cfg, world_size, machine_capacity(world_size), has_gpu())
    except EstimateError:
        return None


# ------------------------------------------------------------------------------------------------- output
COLUMNS = ("params", "grads", "optimizer", "bucket", "gathered", "activations", "step", "kv_cache")


def as_dict(est: Estimate) -> dict:
    """The estimate as plain numbers (bytes), for ``--json`` and the benchmark; ``vllm`` is null with the hf
    engine."""
    vllm = None
    if est.vllm is not None:
        vllm = {**asdict(est.vllm), "held_in_update": est.vllm.held_in_update, "host": est.vllm.host}
    return {"world_size": est.world_size, "params_per_model": est.params_per_model,
            "tokens_per_row": est.tokens_per_row,
            "models": {m.name: {**asdict(m), "static": asdict(m.static), "transient": m.transient}
                       for m in est.models},
            "vllm": vllm, "phases": {"trainer": est.trainer_phase, "vllm": est.vllm_phase},
            "total": {"device": est.device, "host": est.host}}


def table(est: Estimate) -> str:
    """A text table in GiB: a row per model (its device peak: its static bytes + its largest transient), vLLM's
    row (its weights, profile run and KV cache; 'device': what it holds awake), a total."""
    def gib(x: int) -> str:
        return f"{x / GIB:.3f}"

    head = ["model", *COLUMNS, "device", "host"]
    rows = []
    for m in est.models:
        values = [m.params.device, m.grads, m.optimizer.device, m.bucket, m.gathered, m.activations, m.step,
                  m.kv_cache]
        rows.append([m.name, *map(gib, values), gib(m.static.device + m.transient), gib(m.static.host)])
    v = est.vllm
    if v is not None:
        by_column = {"params": v.weights, "activations": v.profile, "kv_cache": v.kv_cache}
        rows.append(["vllm", *[gib(by_column[c]) if c in by_column else "" for c in COLUMNS], gib(v.reservation),
                     gib(v.host)])
    rows.append(["total/rank", *[""] * len(COLUMNS), gib(est.device), gib(est.host)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    note = (f"GiB per rank, {est.world_size} rank(s); {est.params_per_model / 1e6:.1f}M parameters a model, "
            f"{est.tokens_per_row} tokens a row. Device bytes left of 'device'; 'host': ZeRO-Offload. Held for the "
            "run: params, optimizer, gathered, and grads and bucket at ZeRO-3; below it grads and bucket exist only "
            "while that model updates. A rank's peak: everything held plus the largest transient of any one model (an "
            "update: grads + bucket + activations or step; a generation: kv_cache).")
    if v is not None:
        awake = "stays awake through it" if v.sleep_level == 0 else f"sleeps through it (level {v.sleep_level})"
        note += (f" vLLM samples the policy's rows (rollout.vllm.gpu_memory_utilization={v.utilization}; 'params': "
                 f"its weights, 'activations': its profile run): the peak is the larger of the trainer's work, "
                 f"{gib(est.trainer_phase)}, where vLLM {awake}, and vLLM's sampling, {gib(est.vllm_phase)} "
                 f"(everything held + its {gib(v.reservation)} + a parameter in transit, {gib(v.sync)}).")
    return "\n".join([*lines, note])
