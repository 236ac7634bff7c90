"""The PRIME trainer: set up models and data, then run steps made of named stages.

Read :meth:`PrimeTrainer.step` top to bottom to see one iteration of PRIME (Cui et al. 2025, Algorithm 1).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from prm_rl import core
from prm_rl.config import Config
from prm_rl.data.prompts import PromptStream, builtin_splits
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import frozen_model, trainable_engine
from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint, task_config
from prm_rl.rewards import build_scorer
from prm_rl.tracking.logger import MetricsLogger
from prm_rl.trainer import run_dir, stages
from prm_rl.trainer.buffer import GroupBuffer
from prm_rl.trainer.evaluate import heldout_accuracy


transformers.utils.logging.disable_progress_bar()  # no per-load bars between our own progress lines


def log(msg: str) -> None:
    if dist.is_main():
        print(f"[prm_rl] {msg}", flush=True)


class PrimeTrainer:
    def __init__(self, cfg: Config, raw_cfg: DictConfig, name: str = "run"):
        self.cfg, self.started = cfg, time.time()
        self.timings: dict[str, float] = {}
        torch.manual_seed(cfg.trainer.seed * 1000 + dist.rank())  # sampling differs per rank, reproducibly
        # Shuffles and prompt order must agree on every rank: they use their own generator.
        self.shuffle = torch.Generator().manual_seed(cfg.trainer.seed)

        self.run_dir = run_dir.create(cfg.trainer.output_dir, name)
        log(f"run directory: {self.run_dir}")
        run_dir.save_config(self.run_dir, raw_cfg)

        checkpoint = start_checkpoint(cfg, log=log) if dist.is_main() else None
        checkpoint = dist.broadcast_object(checkpoint)  # rank 0 may have just trained the warm start
        self.models = self._build_models(checkpoint)
        self.step_ends = stages.step_end_table(self.models.tokenizer, cfg.reward.step_delimiter)

        splits = builtin_splits(task_config(cfg), train_size=cfg.task.train_size, eval_size=cfg.task.eval_size,
                                seed=cfg.task.seed)
        self.eval_samples = splits.eval
        self.prompts = PromptStream(splits.train, seed=cfg.trainer.seed)
        self.buffer = GroupBuffer(cfg.rollout.samples_per_prompt, self.models.tokenizer.pad_token_id)
        v = cfg.verifier
        self.scorer = build_scorer(v.tasks, num_workers=v.num_workers, timeout_s=v.timeout_s)
        self.raw_cfg = raw_cfg
        self.logger: MetricsLogger | None = None  # opened by fit(), after the starting evaluation

    def _build_models(self, checkpoint: str) -> stages.Models:
        """Policy and PRM start from the same SFT checkpoint; the reference is a frozen copy of it."""
        cfg = self.cfg
        mc, ds = cfg.model, cfg.deepspeed
        tokenizer = load_tokenizer(cfg, checkpoint)
        policy = trainable_engine(load_causal_lm(checkpoint, mc.dtype, mc.gradient_checkpointing), ds,
                                  dtype=mc.dtype, lr=cfg.policy.learning_rate,
                                  weight_decay=cfg.policy.weight_decay, grad_clip=cfg.policy.grad_clip)
        prm = ref = None
        if cfg.algorithm.uses_prm:
            prm = trainable_engine(load_causal_lm(checkpoint, mc.dtype, mc.gradient_checkpointing), ds,
                                   dtype=mc.dtype, lr=cfg.prm.learning_rate, weight_decay=cfg.prm.weight_decay,
                                   grad_clip=cfg.prm.grad_clip)
        if (cfg.algorithm.uses_prm and cfg.prm.reference == "sft") or cfg.policy.kl_coef:
            ref = frozen_model(load_causal_lm(checkpoint, mc.dtype), ds, dtype=mc.dtype)
        synced = ds.zero_stage == 3 and dist.world_size() > 1
        return stages.Models(policy, prm, ref, tokenizer, synced)

    @contextmanager
    def _timed(self, stage: str):
        """Add the block's wall time to this step's ``time/<stage>`` (a stage may run in several rounds)."""
        start = time.time()
        yield
        key = f"time/{stage}"
        self.timings[key] = self.timings.get(key, 0.0) + time.time() - start

    def evaluate(self) -> float:
        cfg = self.cfg
        return heldout_accuracy(self.models.policy.module, self.models.tokenizer, self.eval_samples, self.scorer,
                                batch_size=cfg.rollout.eval_batch_size, max_new_tokens=cfg.rollout.max_new_tokens,
                                synced_gpus=self.models.synced_generation)

    def step(self) -> dict[str, float]:
        """One PRIME iteration. Every rank runs every stage; each returns global results."""
        cfg, m = self.cfg, self.models
        self.timings = {}
        metrics: dict[str, float] = {}
        batch, scores = self._collect_groups(metrics)  # generate -> verify -> filter, maybe several rounds
        if batch is None:  # no group passed the filter: nothing to learn from this step
            return metrics | self.timings
        micro = cfg.policy.micro_batch_size

        with self._timed("old_logprobs"):
            old_logp = stages.logprob_stage(m.policy, batch, micro, cfg.rollout.temperature)
            ref_logp = stages.logprob_stage(m.ref, batch, micro) if m.ref is not None else None

        process_rewards = None
        if cfg.algorithm.uses_prm:
            prm_ref = ref_logp if cfg.prm.reference == "sft" else old_logp
            with self._timed("prm"):
                log_ratio = self._prm_log_ratios(batch, scores, prm_ref, metrics)
                process_rewards = stages.process_reward_stage(log_ratio, batch, self.step_ends, cfg)

        with self._timed("advantages"):
            advantages = stages.advantage_stage(scores, process_rewards, batch.response_mask, cfg)
        with self._timed("policy"):
            metrics.update(stages.policy_update_stage(m.policy, batch, old_logp, advantages, ref_logp, cfg,
                                                      self.shuffle))
        return metrics | self.timings

    def _prm_log_ratios(self, batch, scores, prm_ref, metrics) -> torch.Tensor:
        """Update the PRM per ``prm.update`` and return the token log-ratios the rewards come from."""
        cfg, prm = self.cfg, self.models.prm
        micro = cfg.policy.micro_batch_size
        if cfg.prm.update == "none":
            log_ratio = stages.implicit_log_ratio_stage(prm, batch, prm_ref, micro)
        else:
            log_ratio, prm_metrics = stages.prm_update_stage(prm, batch, scores, prm_ref, cfg, self.shuffle)
            metrics.update(prm_metrics)
            if cfg.prm.update == "before":  # double forward: re-score with the updated PRM
                log_ratio = stages.implicit_log_ratio_stage(prm, batch, prm_ref, micro)
        seq = core.sequence_reward(log_ratio, batch.response_mask, cfg.prm.beta)
        correct, weight = core.pairwise_ranking_accuracy(seq, scores, cfg.rollout.samples_per_prompt)
        if weight > 0:
            metrics["prm/ranking_acc"] = float(correct / weight)
        return log_ratio

    def _collect_groups(self, metrics: dict[str, float]):
        """Sample, verify and filter rounds of prompts until ``prompts_per_step`` groups are kept or
        ``filter.fill_rounds`` is reached; returns that many buffered groups (or fewer, or None)."""
        cfg, m = self.cfg, self.models
        k, wanted = cfg.rollout.samples_per_prompt, cfg.rollout.prompts_per_step
        scores_all, lengths, truncated, kept_rows, failures, rounds = [], [], [], 0, 0, 0
        while rounds < cfg.filter.fill_rounds and len(self.buffer) < wanted:
            prompts = self.prompts.take(wanted)
            with self._timed("generate"):
                rollout = stages.generate_stage(m, prompts, cfg)
            with self._timed("verify"):
                scores, n_failed = stages.verify_stage(self.scorer, m.tokenizer, rollout, prompts, k)
            with self._timed("filter"):
                kept = stages.filter_stage(scores, rollout.truncated, cfg)
                self.buffer.add(rollout.select(kept), scores[kept])
            scores_all.append(scores)
            lengths.append(rollout.response_mask.sum(dim=1).float())
            truncated.append(rollout.truncated.float())
            kept_rows, failures, rounds = kept_rows + kept.numel(), failures + n_failed, rounds + 1
        scores, lengths, truncated = torch.cat(scores_all), torch.cat(lengths), torch.cat(truncated)
        metrics.update({
            "acc/before_filter": scores.mean().item(),
            "acc/kept_fraction": kept_rows / scores.numel(),
            "filter/rounds": float(rounds),
            "verify/failures": float(failures),
            "response/length_mean": lengths.mean().item(),
            "response/length_max": lengths.max().item(),
            "response/truncated_frac": truncated.mean().item(),
        })
        if len(self.buffer) == 0:
            return None, None
        batch, batch_scores = self.buffer.take(wanted)
        metrics.update({"acc/after_filter": batch_scores.mean().item(), "filter/groups": len(batch) / k,
                        "filter/carried_over_groups": float(len(self.buffer))})
        return batch, batch_scores

    def fit(self) -> dict:
        cfg = self.cfg
        log("evaluating the starting policy on the held-out split")
        acc_start = self.evaluate()
        log(f"held-out accuracy at start: {acc_start:.3f}")
        if dist.is_main():
            self.logger = MetricsLogger(self.run_dir, total_steps=cfg.trainer.max_steps, start_step=0,
                                        wandb_mode=cfg.wandb.mode, project=cfg.wandb.project,
                                        entity=cfg.wandb.entity, name=cfg.wandb.name or self.run_dir.name,
                                        config=OmegaConf.to_container(self.raw_cfg, resolve=True),
                                        progress_bar=cfg.trainer.progress_bar)
        for step in range(1, cfg.trainer.max_steps + 1):
            t0 = time.time()
            metrics = self.step()
            metrics["time/step"] = time.time() - t0
            generated = metrics["filter/rounds"] * cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt
            metrics["perf/tokens_per_second"] = metrics["response/length_mean"] * generated / metrics["time/step"]
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0 and step < cfg.trainer.max_steps:
                metrics["eval/accuracy"] = self.evaluate()
            if self.logger:
                self.logger.log(step, metrics)
        acc_final = self.evaluate()
        log(f"held-out accuracy: start {acc_start:.3f} -> final {acc_final:.3f}")
        return self._finish(acc_start, acc_final)

    def _finish(self, acc_start: float, acc_final: float) -> dict:
        m = self.models
        run_dir.save_hf_model(m.policy, m.tokenizer, self.run_dir / "policy")
        if m.prm is not None:
            run_dir.save_hf_model(m.prm, m.tokenizer, self.run_dir / "prm")
        summary = {
            "steps": self.cfg.trainer.max_steps,
            "wall_seconds": round(time.time() - self.started, 1),
            "eval_accuracy_start": acc_start,
            "eval_accuracy_final": acc_final,
            "eval_size": len(self.eval_samples),
            "world_size": dist.world_size(),
            "command": run_dir.command_line(),
        }
        if dist.is_main():
            run_dir.write_json(self.run_dir / "summary.json", summary)
            self.logger.summary(summary)
            self.logger.close()
        self.scorer.close()
        log(f"done: {self.run_dir}")
        return summary
