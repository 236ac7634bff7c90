"""The PRIME trainer: set up models and data, then run steps made of named stages.

Read :meth:`PrimeTrainer.step` top to bottom to see one iteration of PRIME (Cui et al. 2025, Algorithm 1):
generate -> verify -> filter here, then :func:`prm_rl.trainer.step.learn` (PRM update, rewards, advantages,
policy update).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from prm_rl import core
from prm_rl.config import Config
from prm_rl.data.files import DataError, file_splits
from prm_rl.data.prompts import PromptSplits, PromptStream, builtin_splits
from prm_rl.engine import dist
from prm_rl.estimate import launch_warning
from prm_rl.engine.deepspeed_engine import (frozen_model, release_cached_memory, resident,
                                            set_optimizer_hyperparameters, trainable_engine)
from prm_rl.models.loading import load_causal_lm, load_tokenizer, start_checkpoint
from prm_rl.rewards import build_scorer
from prm_rl.rollout.generate import Rollout
from prm_rl.tracking import heatmap
from prm_rl.tracking.logger import MetricsLogger, finite_or_none
from prm_rl.trainer import checkpoint, prm_eval, run_dir, stages
from prm_rl.trainer.buffer import GroupBuffer
from prm_rl.trainer.evaluate import heldout_accuracy
from prm_rl.trainer.faults import (EXIT_NONFINITE, EXIT_SIGNAL, NonFiniteGuard, RunStopped, StopSignals,
                                   injected_nan_steps, on_rank0)
from prm_rl.trainer.step import LearnSections, learn


transformers.utils.logging.disable_progress_bar()  # no per-load bars between our own progress lines


def log(msg: str) -> None:
    if dist.is_main():
        print(f"[prm_rl] {msg}", flush=True)


def load_prompt_splits(cfg: Config, tokenizer, scorer, log=log) -> PromptSplits:
    """Training and held-out prompts: the user's files (``data.*``) or the built-in task (``task.*``)."""
    if cfg.data.train is None:
        t = cfg.task
        return builtin_splits(t.selected, train_size=t.train_size, eval_size=t.eval_size, seed=t.seed)
    splits, counts = file_splits(cfg.data, tokenizer, scorer.check_fields)
    try:
        scorer.check_tasks({s.task for s in splits.train + splits.eval})
    except ValueError as err:
        raise DataError(f"{cfg.data.train}: {err}") from None
    limit = f"longer than data.max_prompt_tokens={cfg.data.max_prompt_tokens}"
    log(f"data: {len(splits.train)} training prompts from {cfg.data.train} ({counts['train_rows']} rows, "
        f"{counts['train_dropped_too_long']} dropped: {limit})")
    if cfg.data.eval is not None:
        log(f"data: {len(splits.eval)} held-out prompts from {cfg.data.eval} ({counts['eval_rows']} rows, "
            f"{counts['eval_dropped_too_long']} dropped: {limit})")
    for name in ("train", "eval"):
        if counts[f"{name}_with_unknown_tokens"]:
            log(f"warning: {counts[f'{name}_with_unknown_tokens']} prompts of data.{name} hold characters the "
                "tokenizer cannot encode (kept, with its unknown token in their place)")
    return splits


@dataclass
class Collected:
    """What generate -> verify -> filter produced for one step."""

    batch: Rollout | None  # the kept groups (None: no group passed the filter)
    scores: torch.Tensor | None  # [N] their outcome scores
    metrics: dict[str, float]  # acc/*, filter/*, verify/*, response/*
    generated_tokens: float  # response tokens sampled in every round (kept or not): the throughput numerator


@dataclass
class StepOutcome:
    metrics: dict[str, float]
    generated_tokens: float
    skipped_updates: float  # optimiser updates skipped for NaN/inf this step: what the guard counts


def _poison(advantages: torch.Tensor) -> torch.Tensor:
    """Fault injection: NaN advantages make every loss and gradient of the policy update non-finite."""
    return advantages * float("nan")


class PrimeTrainer:
    def __init__(self, cfg: Config, raw_cfg: DictConfig, name: str = "run"):
        self.cfg, self.started = cfg, time.time()
        torch.manual_seed(cfg.trainer.seed * 1000 + dist.rank())  # sampling differs per rank, reproducibly
        # Shuffles and prompt order must agree on every rank: they use their own generator.
        self.shuffle = torch.Generator().manual_seed(cfg.trainer.seed)

        self.run_dir = run_dir.create(cfg.trainer.output_dir, name, log)
        log(f"run directory: {self.run_dir}")
        # Decided before any model loads, so a bad trainer.resume fails in seconds.
        self.resume_from = on_rank0(lambda: checkpoint.find_resume_point(self.run_dir, cfg.trainer.resume, log))

        v = cfg.verifier  # checked before the warm start, which may take minutes
        self.scorer = build_scorer(v.tasks, num_workers=v.num_workers, timeout_s=v.timeout_s, root="verifier.tasks")
        sft = on_rank0(lambda: start_checkpoint(cfg, log=log))  # may train the warm start
        tokenizer = load_tokenizer(cfg.model.tokenizer_path or sft)
        splits = load_prompt_splits(cfg, tokenizer, self.scorer)  # a bad dataset fails here, before models load
        run_dir.save_config(self.run_dir, raw_cfg)  # only once the inputs passed: a rejected start overwrites nothing
        self.eval_samples = splits.eval
        self.prompts = PromptStream(splits.train, seed=cfg.trainer.seed)

        if dist.is_main() and (too_big := launch_warning(cfg, dist.world_size())):
            log(f"warning: {too_big}")  # the run goes on: the estimate errs high (docs/benchmarks.md)
        self.models = self._build_models(sft, tokenizer)
        self.step_ends = stages.step_end_table(tokenizer, cfg.reward.step_delimiter)
        self.buffer = GroupBuffer(cfg.rollout.samples_per_prompt, tokenizer.pad_token_id)
        self.raw_cfg = raw_cfg
        self.guard = NonFiniteGuard(cfg.trainer.max_bad_steps)
        self.nan_steps = injected_nan_steps()
        self.sections = LearnSections.of(cfg)
        self.acc_start = float("nan")
        self.prm_eval_start: dict[str, float] = {}
        self.prm_eval_last: dict[str, float] = {}
        self.sft_groups: prm_eval.HeldoutGroups | None = None  # held-out samples of the starting model
        self.logger: MetricsLogger | None = None  # opened by fit(), after the starting evaluation

    def _build_models(self, checkpoint: str, tokenizer) -> stages.Models:
        """Policy and PRM start from the same SFT checkpoint (the PRM from ``prm.init_path`` when set); the
        reference is a frozen copy of the SFT checkpoint."""
        cfg = self.cfg
        mc, ds = cfg.model, cfg.deepspeed
        policy = trainable_engine(load_causal_lm(checkpoint, mc.dtype, mc.gradient_checkpointing), ds,
                                  dtype=mc.dtype, lr=cfg.policy.learning_rate,
                                  weight_decay=cfg.policy.weight_decay, grad_clip=cfg.policy.grad_clip)
        prm = ref = None
        if cfg.algorithm.uses_prm:
            prm_start = load_causal_lm(cfg.prm.init_path or checkpoint, mc.dtype, mc.gradient_checkpointing)
            prm = trainable_engine(prm_start, ds, dtype=mc.dtype, lr=cfg.prm.learning_rate,
                                   weight_decay=cfg.prm.weight_decay, grad_clip=cfg.prm.grad_clip)
        if (cfg.algorithm.uses_prm and cfg.prm.reference == "sft") or cfg.policy.kl_coef or cfg.algorithm.self_guided:
            ref = frozen_model(load_causal_lm(checkpoint, mc.dtype), ds, dtype=mc.dtype, offload=mc.offload_reference)
        synced = ds.zero_stage == 3 and dist.world_size() > 1
        return stages.Models(policy, prm, ref, tokenizer, synced, offload_reference=mc.offload_reference)

    def evaluate(self) -> float:
        """Greedy held-out accuracy; NaN when there is no held-out set (data.train without data.eval)."""
        cfg = self.cfg
        if not self.eval_samples:
            return float("nan")
        return heldout_accuracy(self.models.policy.module, self.models.tokenizer, self.eval_samples, self.scorer,
                                batch_size=cfg.rollout.eval_batch_size, max_new_tokens=cfg.rollout.max_new_tokens,
                                synced_gpus=self.models.synced_generation)

    def evaluate_prm(self, step: int) -> dict[str, float]:
        """Held-out metrics of the training PRM (docs/prm_eval.md) on two sample sets:

        - ``prm_eval/*``: fresh samples of the current policy, the responses the PRM has to judge now;
          ``prm_eval.table_rows`` of them are drawn as token heatmaps (W&B table, ``prm_eval/step_N.html``);
        - ``prm_eval_sft/*``: samples of the frozen starting (SFT) model, drawn once, so that every change
          along the run is the PRM's own (only when the reference model is loaded).
        """
        cfg, m = self.cfg, self.models
        settings = cfg.prm_eval
        if m.prm is None or min(len(self.eval_samples), settings.num_prompts) < dist.world_size():
            return {}
        with resident(m.ref, m.offload_reference):  # read by both sample sets below
            groups = self._sample_heldout(m.policy)
            metrics, log_ratio = self._score_prm(groups)
            out = {f"prm_eval/{k}": v for k, v in metrics.items()}
            if m.ref is not None:
                if self.sft_groups is None:
                    self.sft_groups = self._sample_heldout(m.ref)
                out |= {f"prm_eval_sft/{k}": v for k, v in self._score_prm(self.sft_groups)[0].items()}
        if dist.is_main() and settings.table_rows:
            shown = prm_eval.heatmap_rows(groups, log_ratio, m.tokenizer, self.step_ends, cfg.prm.beta,
                                          settings.table_rows)
            prm_eval.save_heatmaps(shown, self.run_dir / "prm_eval" / f"step_{step:06d}")
            if self.logger is not None and shown:
                columns = [*shown[0][0], "heatmap"]
                rows = [[*fields.values(), heatmap.to_html(h)] for fields, h in shown]
                self.logger.table(step, "prm_eval/samples", columns, rows, html_column="heatmap")
        return out

    def _sample_heldout(self, model) -> prm_eval.HeldoutGroups:
        """``prm_eval.samples_per_prompt`` responses of ``model`` (engine or module) to each evaluation prompt."""
        cfg, m = self.cfg, self.models
        return prm_eval.sample_heldout(getattr(model, "module", model), m.tokenizer,
                                       self.eval_samples[:cfg.prm_eval.num_prompts], self.scorer, cfg.prm_eval,
                                       max_new_tokens=cfg.rollout.max_new_tokens, synced_gpus=m.synced_generation)

    def _score_prm(self, groups: prm_eval.HeldoutGroups) -> tuple[dict[str, float], torch.Tensor]:
        """The PRM's metrics on ``groups``, read against its own reference (as in training)."""
        cfg, m = self.cfg, self.models
        ref, ref_temperature = (m.ref, 1.0) if cfg.prm.reference == "sft" else (m.policy, cfg.rollout.temperature)
        return prm_eval.evaluate_prm(m.prm, ref, groups, beta=cfg.prm.beta, step_end_table=self.step_ends,
                                     micro_batch_size=cfg.prm.micro_batch_size, ref_temperature=ref_temperature,
                                     max_tokens=cfg.prm.micro_batch_tokens)

    def step(self, step: int) -> StepOutcome:
        """One PRIME iteration. Every rank runs every stage; each returns global results."""
        timings = stages.Timings()
        collected = self._collect_groups(timings)  # generate -> verify -> filter, maybe several rounds
        metrics, skipped = collected.metrics, 0.0
        if collected.batch is not None:  # else no group passed the filter: nothing to learn from this step
            hook = _poison if step in self.nan_steps else None  # fault injection (PRM_RL_INJECT_NAN_STEPS)
            learned = learn(self.models, collected.batch, collected.scores, self.sections, self.step_ends,
                            self.shuffle, advantage_hook=hook)
            metrics, skipped = metrics | learned.metrics, learned.skipped_updates
        return StepOutcome(metrics | timings.metrics(), collected.generated_tokens, skipped)

    def _collect_groups(self, timed: stages.Timings) -> Collected:
        """Sample, verify and filter rounds of prompts until ``prompts_per_step`` groups are kept or
        ``filter.fill_rounds`` is reached; returns that many buffered groups (or fewer, or none)."""
        cfg, m = self.cfg, self.models
        k, wanted = cfg.rollout.samples_per_prompt, cfg.rollout.prompts_per_step
        scores_all, lengths, truncated, repeats, kept_rows, failures, rounds = [], [], [], [], 0, 0, 0
        while rounds < cfg.filter.fill_rounds and len(self.buffer) < wanted:
            prompts = self.prompts.take(wanted)
            with timed("generate"):
                r = cfg.rollout
                rollout = stages.generate_stage(m.policy.module, m.tokenizer, prompts, k,
                                                max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                                top_p=r.top_p, synced_gpus=m.synced_generation)
                if r.release_cache:
                    release_cached_memory()
            with timed("verify"):
                scores, n_failed = stages.verify_stage(self.scorer, m.tokenizer, rollout, prompts, k)
            with timed("filter"):
                kept = stages.filter_stage(scores, rollout.truncated, k, cfg.filter)
                self.buffer.add(rollout.select(kept), scores[kept])
            scores_all.append(scores)
            lengths.append(rollout.response_mask.sum(dim=1).float())
            truncated.append(rollout.truncated.float())
            repeats.append(core.repeated_ngram_fraction(rollout.response_ids, rollout.response_mask))
            kept_rows, failures, rounds = kept_rows + kept.numel(), failures + n_failed, rounds + 1
        scores, lengths, truncated = torch.cat(scores_all), torch.cat(lengths), torch.cat(truncated)
        metrics = {
            "acc/before_filter": scores.mean().item(),
            "acc/kept_fraction": kept_rows / scores.numel(),
            "filter/rounds": float(rounds),
            "verify/failures": float(failures),
            "response/length_mean": lengths.mean().item(),
            "response/length_max": lengths.max().item(),
            "response/truncated_frac": truncated.mean().item(),
            "watch/repeated_4gram_frac": torch.cat(repeats).mean().item(),  # reward hacking: looping text
        }
        generated_tokens = lengths.sum().item()
        if len(self.buffer) == 0:
            return Collected(None, None, metrics, generated_tokens)
        batch, batch_scores = self.buffer.take(wanted)
        metrics.update({"acc/after_filter": batch_scores.mean().item(), "filter/groups": len(batch) / k,
                        "filter/carried_over_groups": float(len(self.buffer))})
        return Collected(batch, batch_scores, metrics, generated_tokens)

    def fit(self) -> dict:
        """Train to ``trainer.max_steps`` (resuming if a checkpoint says so), saving on schedule and on SIGTERM."""
        cfg = self.cfg
        finished = self.run_dir / "summary.json"
        if self.resume_from is not None and checkpoint.step_of(Path(self.resume_from)) >= cfg.trainer.max_steps \
                and finished.exists():
            log(f"{self.run_dir} already finished {cfg.trainer.max_steps} steps (summary.json): nothing to do; "
                "raise trainer.max_steps to train on, or set another trainer.output_dir for a new run")
            return json.loads(finished.read_text())
        try:
            with StopSignals() as signals:
                self._train_loop(signals)
        except RunStopped:
            self._close()  # what was logged reaches W&B; the verifier workers stop
            raise
        acc_final = self.evaluate()
        log(f"held-out accuracy: start {self.acc_start:.3f} -> final {acc_final:.3f}")
        return self._finish(acc_final)

    def _train_loop(self, signals: StopSignals) -> None:
        """Steps from the last one done to ``trainer.max_steps``; checkpoints on schedule, stops on a signal."""
        cfg = self.cfg
        for step in range(self._start() + 1, cfg.trainer.max_steps + 1):
            metrics = self._train_step(step)
            if self.logger:
                self.logger.log(step, metrics)
            if self.guard.exhausted:
                raise RunStopped(self._nonfinite_message(step), EXIT_NONFINITE)
            stop = bool(dist.all_reduce_max(torch.tensor([signals.received is not None])).item())
            every = cfg.trainer.checkpoint_every
            due = step == cfg.trainer.max_steps or (every and step % every == 0)
            if stop or (due and self.guard.consecutive == 0):  # no scheduled save mid NaN streak
                saved = self._save(step)
            if stop:
                raise RunStopped(f"stopped by {signals.received or 'a signal on another rank'} after step {step}; "
                                 f"saved {saved}. Run the same command again to resume (trainer.resume=auto)",
                                 EXIT_SIGNAL)

    def _train_step(self, step: int) -> dict[str, float]:
        """``step()`` plus throughput, guard counters and the periodic held-out evaluation."""
        cfg = self.cfg
        t0 = time.time()
        outcome = self.step(step)
        metrics = outcome.metrics
        metrics["time/step"] = time.time() - t0
        metrics["perf/tokens_per_second"] = outcome.generated_tokens / metrics["time/step"]
        metrics.update(self.guard.update(outcome.skipped_updates))
        due = bool(cfg.trainer.eval_every) and step % cfg.trainer.eval_every == 0
        if due and step < cfg.trainer.max_steps:  # the final accuracy is measured by fit()
            metrics["eval/accuracy"] = self.evaluate()
        if due or step == cfg.trainer.max_steps:
            self.prm_eval_last = self.evaluate_prm(step)
            metrics.update(self.prm_eval_last)
        return metrics

    def _nonfinite_message(self, step: int) -> str:
        found = checkpoint.complete(self.run_dir)
        last = f"the last checkpoint, {found[-1]}, is intact" if found else "no checkpoint was written yet"
        return (f"stopping at step {step}: {self.guard.consecutive} steps in a row had NaN/inf losses or gradients "
                f"(trainer.max_bad_steps={self.cfg.trainer.max_bad_steps}), their updates were skipped; {last}")

    def _engines(self) -> dict:
        m = self.models
        return {"policy": m.policy} | ({"prm": m.prm} if m.prm is not None else {})

    def _start(self) -> int:
        """Restore the checkpoint chosen at start-up, or evaluate the starting policy; returns the last step done."""
        cfg, state = self.cfg, {}
        if self.resume_from is None:
            log("evaluating the starting policy on the held-out split")
            self.acc_start = self.evaluate()
            log(f"held-out accuracy at start: {self.acc_start:.3f}")
        else:
            path = Path(self.resume_from)
            for change in checkpoint.config_changes(path, self.raw_cfg) if dist.is_main() else []:
                log(f"config differs from the checkpoint's: {change}")
            state, buffer_state, rng = checkpoint.load(path, self._engines())
            for name, engine in self._engines().items():  # the config's optimiser settings win over the saved ones
                section = getattr(cfg, name)
                set_optimizer_hyperparameters(engine, lr=section.learning_rate, weight_decay=section.weight_decay)
                log(f"{name} optimiser after resume: learning_rate={section.learning_rate:g}, "
                    f"weight_decay={section.weight_decay:g} (from the config)")
            self.buffer.load_state_dict(buffer_state)
            self.prompts.position = state["prompt_position"]
            self.guard.consecutive, self.guard.total = state["bad_steps_in_a_row"], state["bad_steps_total"]
            self.acc_start = state["eval_accuracy_start"]
            self.started = time.time() - state["wall_seconds"]  # wall_seconds counts time spent training
            checkpoint.set_rng_state(rng, self.shuffle)
            log(f"resumed from {path} (step {state['step']} of {cfg.trainer.max_steps})")
        done = state.get("step", 0)
        if dist.is_main():
            self.logger = MetricsLogger(self.run_dir, total_steps=cfg.trainer.max_steps, start_step=done,
                                        wandb_mode=cfg.wandb.mode, project=cfg.wandb.project,
                                        entity=cfg.wandb.entity, name=cfg.wandb.name or self.run_dir.name,
                                        config=OmegaConf.to_container(self.raw_cfg, resolve=True),
                                        progress_bar=cfg.trainer.progress_bar, run_id=state.get("wandb_run_id"))
        if self.resume_from is None:
            self.prm_eval_start = self.evaluate_prm(0)
            if self.logger and self.prm_eval_start:
                self.logger.record(0, self.prm_eval_start)
        else:
            self.prm_eval_start = state.get("prm_eval_start", {})
        return done

    def _save(self, step: int) -> Path:
        state = {
            "step": step,
            "prompt_position": self.prompts.position,
            "bad_steps_in_a_row": self.guard.consecutive,
            "bad_steps_total": self.guard.total,
            "eval_accuracy_start": self.acc_start,
            "prm_eval_start": self.prm_eval_start,
            "wandb_run_id": self.logger.run_id if self.logger else None,
            "world_size": dist.world_size(),
            "wall_seconds": round(time.time() - self.started, 1),
        }
        return checkpoint.save(self.run_dir, step, engines=self._engines(), tokenizer=self.models.tokenizer,
                               trainer_state=state, buffer_state=self.buffer.state_dict(),
                               rng=checkpoint.rng_state(self.shuffle), config=self.raw_cfg,
                               keep=self.cfg.trainer.keep_checkpoints, log=log)

    def _finish(self, acc_final: float) -> dict:
        m = self.models
        run_dir.save_hf_model(m.policy, m.tokenizer, self.run_dir / "policy")
        if m.prm is not None:
            run_dir.save_hf_model(m.prm, m.tokenizer, self.run_dir / "prm")
        summary = {
            "steps": self.cfg.trainer.max_steps,
            "wall_seconds": round(time.time() - self.started, 1),
            "eval_accuracy_start": self.acc_start,
            "eval_accuracy_final": acc_final,
            "eval_size": len(self.eval_samples),
            "prm_eval_start": finite_or_none(self.prm_eval_start),
            "prm_eval_final": finite_or_none(self.prm_eval_last),
            "world_size": dist.world_size(),
            "command": run_dir.command_line(),
        }
        if dist.is_main():
            run_dir.write_json(self.run_dir / "summary.json", summary)
            self.logger.summary(summary)
        self._close()
        log(f"done: {self.run_dir}")
        return summary

    def _close(self) -> None:
        if self.logger:
            self.logger.close()
        self.scorer.close()

