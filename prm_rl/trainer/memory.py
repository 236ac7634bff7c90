"""Per-rank memory of a PRIME run, estimated from its config before any model loads.

Per model (policy; PRM when the estimator uses one; the frozen reference when :attr:`Config.needs_reference`),
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

The DeepSpeed details were read in its source (0.19: runtime/engine.py, zero/stage_1_and_2.py, zero/stage3.py) and
checked against the resident memory of CPU runs (bench/memory.py, docs/benchmarks/memory.md), where each term was
seen except the reduce bucket's untouched pages.

What it leaves out: the process itself (CUDA context, allocator fragmentation, on CPU the Python/torch/DeepSpeed
baseline: measured in docs/benchmarks/memory.md), the rollout's small index tensors, and gradients of activations
beyond the logits' and one layer's. Activations assume Hugging Face's ``sdpa`` attention (no ``[L, L]``
attention matrix per head is kept) and Llama-style decoders (llama, mistral, qwen2, qwen3).
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


def model_shape(cfg: Config) -> ModelShape:
    """The starting model's shape: ``model.path``'s config.json (the one file this module reads), or the built-in
    model. The PRM (also from ``prm.init_path``) and the reference are taken to have the same shape."""
    if cfg.model.path is None:
        return shape_of_tiny(cfg.model.tiny, builtin_vocab(cfg))
    from transformers import AutoConfig

    try:  # config.json alone is enough (a Hub id fetches just that)
        config = AutoConfig.from_pretrained(cfg.model.path)
    except (OSError, ValueError, KeyError) as err:
        raise EstimateError(f"model.path={cfg.model.path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    return shape_from_hf(config)


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


def train_activation_bytes(s: ModelShape, p: int, rows: int, length: int, checkpointing: bool) -> int:
    """Peak of one forward/backward over ``rows`` sequences of ``length`` tokens (``t = rows x length``):

    - every layer's :func:`layer_bytes_per_token` x ``t``; with gradient checkpointing only each layer's input
      ``[t, h]`` in the model dtype, plus one layer recomputed in full during the backward;
    - the attention mask ``[rows, 1, length, length]`` in the model dtype, shared by all layers;
    - the final RMSNorm (4h + 4 + 2hP per token) and the token ids (8 per token);
    - the logits ``[t, V]`` and, in the backward, their gradient ``[t, V]`` (model dtype), the fp32 log-sum-exp
      ``[t]`` and the fp32 chunk ``min(t V, LOGIT_CHUNK)`` that ``prm_rl.core.logprobs`` recomputes softmax in;
    - one layer's backward workspace: gradients of the MLP's ``[t, 2i]`` and of the residual ``[t, 2h]``.
    """
    t = rows * length
    layer = layer_bytes_per_token(s, p)
    layers = (s.layers * s.hidden * p + layer) if checkpointing else s.layers * layer
    mask = rows * length * length * p
    head = (4 * s.hidden + 4 + 2 * s.hidden * p + 8) * t
    logits = 2 * t * s.vocab * p + 4 * t + 4 * min(t * s.vocab, LOGIT_CHUNK)
    workspace = (2 * s.intermediate + 2 * s.hidden) * p * t
    return layers * t + mask + head + logits + workspace


def forward_activation_bytes(s: ModelShape, p: int, rows: int, length: int) -> int:
    """Peak of a forward without gradients (reference and old log-probs): the logits ``[t, V]``, the fp32
    log-sum-exp and chunk, the mask, and one layer's working set (q, k, v, output ``[t, H d]`` and the MLP's
    ``[t, 3i]``) and residual ``[t, 2h]``."""
    t = rows * length
    layer = (4 * s.heads * s.head_dim + 3 * s.intermediate + 2 * s.hidden) * p
    return t * s.vocab * p + 4 * t + 4 * min(t * s.vocab, LOGIT_CHUNK) + rows * length * length * p + layer * t


def kv_cache_bytes(s: ModelShape, p: int, rows: int, length: int) -> int:
    """Hugging Face's generation cache: keys and values of every layer, ``[rows, kv_heads, length, d]`` each,
    in the model dtype."""
    return rows * s.layers * 2 * s.kv_heads * s.head_dim * length * p


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

    @property
    def device(self) -> int:
        """Peak on one rank's device: every model's static bytes plus the largest transient of any model."""
        return sum(m.static.device for m in self.models) + max(m.transient for m in self.models)

    @property
    def host(self) -> int:
        return sum(m.static.host for m in self.models)


def estimate(cfg: Config, world_size: int = 1, shape: ModelShape | None = None, resident: bool = False) -> Estimate:
    """The per-rank memory of a PRIME run of ``cfg`` on ``world_size`` ranks (``shape``: default
    :func:`model_shape`; ``resident``: the resident memory of a CPU run, see :func:`bucket_bytes`)."""
    s = shape or model_shape(cfg)
    n, p = param_count(s), 2 if cfg.model.dtype == "bfloat16" else 4
    z, w, off = cfg.deepspeed.zero_stage, world_size, cfg.deepspeed.offload
    length = prompt_tokens(cfg) + cfg.rollout.max_new_tokens
    checkpointing = cfg.model.gradient_checkpointing
    generating, ref_generating = generation_rows(cfg, w)

    def trained(name: str, rows: int, kv_rows: int, lora, option: str) -> ModelMemory:
        """A full model, or (``lora.r > 0``) an adapter: the same terms over its ``a`` parameters, but the
        activations, which run through the whole base (the base's own bytes are the ``base`` row's)."""
        k = adapter_param_count(s, lora, option) if lora.r else n
        return ModelMemory(name, z, param_bytes(k, p, z, w, off), optimizer_bytes(k, p, z, w, off),
                           grads=0 if off and z == 3 else grad_bytes(k, p, z, w),  # offloaded: the host's fp32 ones
                           bucket=bucket_bytes(k, p, z, resident), gathered=0 if lora.r else gathered_bytes(n, p, z),
                           activations=train_activation_bytes(s, p, rows, length, checkpointing),
                           step=step_bytes(k, p, z, w, off), kv_cache=kv_cache_bytes(s, p, kv_rows, length))

    models = [trained("policy", policy_rows(cfg, w, length), generating, cfg.model.lora, "model.lora")]
    if cfg.algorithm.uses_prm:
        models.append(trained("prm", prm_rows(cfg, w, length), 0, cfg.prm.lora, "prm.lora"))
    lora = cfg.model.lora.r or (cfg.algorithm.uses_prm and cfg.prm.lora.r)
    if lora:  # one frozen base under the adapters (and the reference): sharded at stage 3 like a trained model's
        models.append(ModelMemory("base", params=param_bytes(n, p, z, w, off), gathered=gathered_bytes(n, p, z)))
    if cfg.needs_reference and lora:  # the base with the adapters off: its forwards and sampling only
        models.append(ModelMemory("reference", activations=forward_activation_bytes(s, p, forward_rows(cfg, w, length),
                                                                                    length),
                                  kv_cache=kv_cache_bytes(s, p, ref_generating, length)))
    elif cfg.needs_reference:
        # engine/deepspeed_engine.py frozen_model: a ZeRO-3 engine over several ranks, else a plain module, on the
        # device or (model.offload_reference) in host memory, brought to the device for its forwards and sampling
        sharded = z == 3 and w > 1
        offloaded = cfg.model.offload_reference and not sharded
        visiting = n * p if offloaded else 0
        params = Bytes(0, n * p) if offloaded else param_bytes(n, p, 3 if sharded else 0, w, off)
        forward = forward_activation_bytes(s, p, forward_rows(cfg, w, length), length)
        models.append(ModelMemory("reference", params=params, gathered=gathered_bytes(n, p, z, sharded),
                                  activations=visiting + forward,
                                  kv_cache=visiting + kv_cache_bytes(s, p, ref_generating, length)))
    return Estimate(w, n, length, models)


def fit_message(est: Estimate, capacity_bytes: int) -> str | None:
    if est.device <= capacity_bytes:
        return None
    return (f"estimate: {est.device / GIB:.1f} GiB per rank does not fit in {capacity_bytes / GIB:.1f} GiB "
            f"({est.world_size} ranks; python -m prm_rl.cli.estimate shows the terms)")


def check_fits(cfg: Config, world_size: int, capacity_bytes: int) -> str | None:
    """None when the estimated device peak of one rank fits in ``capacity_bytes``, else a one-line warning."""
    return fit_message(estimate(cfg, world_size), capacity_bytes)


def machine_capacity(world_size: int) -> int:
    """Bytes one rank may use here: one GPU's memory, or without a GPU the host memory shared by this node's ranks."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    # the DeepSpeed launcher's LOCAL_SIZE, torchrun's LOCAL_WORLD_SIZE; our own CPU ranks are all local
    ranks_here = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(ranks_here, 1)


def launch_warning(cfg: Config, world_size: int) -> str | None:
    """:func:`check_fits` against :func:`machine_capacity`, for the trainer to print before its models load;
    None when the run fits or its model's shape cannot be read (no estimate, no warning)."""
    try:
        return check_fits(cfg, world_size, machine_capacity(world_size))
    except EstimateError:
        return None


# ------------------------------------------------------------------------------------------------- output
COLUMNS = ("params", "grads", "optimizer", "bucket", "gathered", "activations", "step", "kv_cache")


def as_dict(est: Estimate) -> dict:
    """The estimate as plain numbers (bytes), for ``--json`` and the benchmark."""
    return {"world_size": est.world_size, "params_per_model": est.params_per_model,
            "tokens_per_row": est.tokens_per_row,
            "models": {m.name: {**asdict(m), "static": asdict(m.static), "transient": m.transient}
                       for m in est.models},
            "total": {"device": est.device, "host": est.host}}


def table(est: Estimate) -> str:
    """A text table in GiB: a row per model (its device peak: its static bytes + its largest transient), a total."""
    def gib(x: int) -> str:
        return f"{x / GIB:.3f}"

    head = ["model", *COLUMNS, "device", "host"]
    rows = []
    for m in est.models:
        values = [m.params.device, m.grads, m.optimizer.device, m.bucket, m.gathered, m.activations, m.step,
                  m.kv_cache]
        rows.append([m.name, *map(gib, values), gib(m.static.device + m.transient), gib(m.static.host)])
    rows.append(["total/rank", *[""] * len(COLUMNS), gib(est.device), gib(est.host)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    note = (f"GiB per rank, {est.world_size} rank(s); {est.params_per_model / 1e6:.1f}M parameters a model, "
            f"{est.tokens_per_row} tokens a row. Device bytes left of 'device'; 'host': ZeRO-Offload. Held for the "
            "run: params, optimizer, gathered, and grads and bucket at ZeRO-3; below it grads and bucket exist only "
            "while that model updates. A rank's peak: everything held plus the largest transient of any one model (an "
            "update: grads + bucket + activations or step; a generation: kv_cache).")
    return "\n".join([*lines, note])
