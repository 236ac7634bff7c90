"""TRL's ``GRPOTrainer`` on our job: the same warm start, prompts, verifier, batch and held-out evaluation, so
that its learning curve and step time stand beside ours (bench/learning_efficiency.py, method ``trl-grpo``):

    python bench/trl_grpo.py +recipe=math_ppo trainer.seed=0 trainer.max_steps=14 trainer.output_dir=runs/x

It takes launch/train.py's overrides and reads from them what TRL has a counterpart for: the model
(``model.*``/warm start), the prompts (``task.*``/``data.*``), the batch (``rollout.prompts_per_step`` x
``rollout.samples_per_prompt``, ``rollout.max_new_tokens``, ``temperature``, ``top_p``), the optimiser
(``policy.learning_rate``, ``weight_decay``, ``grad_clip``, ``clip_eps``, ``micro_batch_size``,
``lr_schedule``: :func:`trl_schedule`) and ``trainer.seed/max_steps/eval_every/output_dir``. TRL's own defaults
stand for the rest: GRPO's group mean/std advantage, its ``dapo`` token-level loss, ``beta=0`` (no reference
model), one generation and one update per step, no filter. One process on the CPU.

Writes what bench/learning_efficiency.py reads from our runs: ``OUT/metrics.jsonl`` (per step ``time/step``
and ``time/generate``, the seconds spent in TRL's generation call, evaluation excluded; ``eval/accuracy``
every ``eval_every`` steps) and ``OUT/summary.json`` (held-out accuracy at start and end).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_config(overrides: list[str]):
    from prm_rl.cli.startup import compose

    return compose(overrides)  # as launch/train.py composes it


def trl_schedule(schedule) -> dict:
    """GRPOConfig's options for ``policy.lr_schedule``: transformers' schedules, whose formulas ours follow
    (prm_rl/core/schedule.py). A linear decay to a floor has none: one line and exit 2."""
    decay, warmup, floor = schedule.decay, schedule.warmup_steps, schedule.min_lr_ratio
    if decay == "linear" and floor:
        print(f"bench/trl_grpo.py: policy.lr_schedule.min_lr_ratio={floor} with decay=linear: transformers has no "
              "such schedule", file=sys.stderr)
        sys.exit(2)
    if decay == "cosine" and floor:
        return dict(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": floor},
                    warmup_steps=warmup)
    kind = {"constant": "constant_with_warmup" if warmup else "constant", "linear": "linear", "cosine": "cosine"}
    return dict(lr_scheduler_type=kind[decay], warmup_steps=warmup)


def main(overrides: list[str]) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from prm_rl.data.splits import load_prompt_splits
    from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint
    from prm_rl.models.warm_start import checkpointing_option
    from prm_rl.rewards import build_scorer
    from prm_rl.evaluation.accuracy import heldout_accuracy

    cfg = load_config(overrides)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    v, rollout, policy = cfg.verifier, cfg.rollout, cfg.policy
    scorer = build_scorer(v.tasks, num_workers=v.num_workers, timeout_s=v.timeout_s, root="verifier.tasks")
    sft = start_checkpoint(cfg)
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or sft)
    splits = load_prompt_splits(cfg.data, cfg.task, tokenizer, scorer, log=print)
    torch.manual_seed(cfg.trainer.seed)
    model = load_causal_lm(sft, cfg.model.dtype)

    def reward(prompts, completions, row, **_):
        return scorer.score([splits.train[i] for i in row], completions).scores

    def accuracy() -> float:
        was_training = model.training
        model.eval()
        acc = heldout_accuracy(model, tokenizer, splits.eval, scorer, batch_size=rollout.eval_batch_size,
                               max_new_tokens=rollout.max_new_tokens, synced_gpus=False, reward=cfg.reward)
        model.train(was_training)
        return acc

    batch = rollout.prompts_per_step * rollout.samples_per_prompt
    micro = policy.micro_batch_size if batch % policy.micro_batch_size == 0 else batch
    args = GRPOConfig(
        **checkpointing_option(GRPOConfig, cfg.model.gradient_checkpointing), output_dir=str(out / "trl"),
        max_steps=cfg.trainer.max_steps, seed=cfg.trainer.seed,
        data_seed=cfg.trainer.seed, per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        num_generations=rollout.samples_per_prompt, max_completion_length=rollout.max_new_tokens,
        temperature=rollout.temperature, top_p=rollout.top_p, learning_rate=policy.learning_rate,
        **trl_schedule(policy.lr_schedule), weight_decay=policy.weight_decay, max_grad_norm=policy.grad_clip,
        epsilon=policy.clip_eps, beta=0.0, bf16=cfg.model.dtype == "bfloat16",
        use_cpu=not torch.cuda.is_available(), save_strategy="no", report_to=[], logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    data = Dataset.from_list([{"prompt": s.prompt, "row": i} for i, s in enumerate(splits.train)])
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=reward, train_dataset=data,
                          processing_class=tokenizer)

    generate_seconds = [0.0]
    generate = trainer._generate  # one call per step: sampling and reward scoring of the whole batch

    def timed_generate(*a, **kw):
        started = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            generate_seconds[0] += time.perf_counter() - started

    trainer._generate = timed_generate
    metrics = (out / "metrics.jsonl").open("w")
    start_acc = accuracy()

    class StepLog(TrainerCallback):
        """One metrics row per optimiser step; the evaluation's seconds are kept out of the step's."""

        def on_train_begin(self, *_, **__):
            self.last = time.perf_counter()

        def on_step_end(self, _args, state, *__, **___):
            now = time.perf_counter()
            row = {"step": state.global_step, "time/step": now - self.last, "time/generate": generate_seconds[0]}
            generate_seconds[0] = 0.0
            every = cfg.trainer.eval_every
            if every and state.global_step % every == 0 and state.global_step < cfg.trainer.max_steps:
                row["eval/accuracy"] = accuracy()
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            self.last = time.perf_counter()

    trainer.add_callback(StepLog())
    trainer.train()
    metrics.close()
    summary = {"eval_accuracy_start": start_acc, "eval_accuracy_final": accuracy(), "trainer": "trl.GRPOTrainer",
               "steps": cfg.trainer.max_steps, "batch": batch, "micro_batch": micro}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
