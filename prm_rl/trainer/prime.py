"""The PRIME trainer: set up models and data, then run steps made of named stages (the lifecycle around the
steps, from resume to summary, is :class:`prm_rl.trainer.run.Run`'s).

Read :meth:`PrimeTrainer.step` top to bottom to see one iteration of PRIME (Cui et al. 2025, Algorithm 1):
generate -> verify -> filter here, then :func:`prm_rl.trainer.step.learn` (PRM update, rewards, advantages,
policy update).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from prm_rl import core
from prm_rl.config import Config
from prm_rl.data.prompts import PromptStream
from prm_rl.data.splits import load_prompt_splits
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import (frozen_model, full_named_parameters, release_cached_memory, resident,
                                            trainable_engine)
from prm_rl.trainer.memory import launch_warning
from prm_rl.rollout.generate import Rollout
from prm_rl.rollout.vllm_engine import VllmSampler, planned_length
from prm_rl.tracking import heatmap, rollout_table
from prm_rl.tracking.logger import finite_or_none
from prm_rl.evaluation import prm_quality
from prm_rl.trainer import stages
from prm_rl.trainer.buffer import GroupBuffer
from prm_rl.evaluation.accuracy import heldout_accuracy
from prm_rl.trainer.faults import injected_nan_steps
from prm_rl.trainer.roles import load_role_models
from prm_rl.trainer.run import Job, Run, StepOutcome, log
from prm_rl.trainer.step import LearnSections, learn


@dataclass
class Collected:
    """What generate -> verify -> filter produced for one step."""

    batch: Rollout | None  # the kept groups (None: no group passed the filter)
    scores: torch.Tensor | None  # [N] their outcome scores
    metrics: dict[str, float]  # acc/*, filter/*, verify/*, response/*
    generated_tokens: float  # response tokens sampled in every round (kept or not): the throughput numerator
    dropped: rollout_table.Groups | None  # every round's groups the filter dropped (None: none), to be shown


def _poison(advantages: torch.Tensor) -> torch.Tensor:
    """Fault injection: NaN advantages make every loss and gradient of the policy update non-finite."""
    return advantages * float("nan")


class PrimeTrainer(Job):
    """PRIME as a :class:`~prm_rl.trainer.run.Job`: its models, prompts and step; the run does the rest."""

    def __init__(self, cfg: Config, raw_cfg: DictConfig, name: str = "run"):
        self.cfg, self.max_steps = cfg, cfg.trainer.max_steps
        self.run = run = Run(cfg, raw_cfg, name)
        # a bad dataset fails here, before models load
        splits = load_prompt_splits(cfg.data, cfg.task, run.tokenizer, run.scorer, log)
        start = run.inputs_accepted()
        self.eval_samples = splits.eval
        self.prompts = PromptStream(splits.train, seed=cfg.trainer.seed)

        if dist.is_main() and (too_big := launch_warning(cfg, dist.world_size())):
            log(f"warning: {too_big}")  # the run goes on: the estimate errs high (docs/benchmarks.md)
        self.models = self._build_models(start, run.tokenizer)
        self.step_ends = stages.step_end_table(run.tokenizer, cfg.reward.step_delimiter)
        self.buffer = GroupBuffer(cfg.rollout.samples_per_prompt, run.tokenizer.pad_token_id)
        self.nan_steps = injected_nan_steps()
        self.sections = LearnSections.of(cfg)
        self.acc_start = float("nan")
        self.prm_eval_start: dict[str, float] = {}
        self.prm_eval_last: dict[str, float] = {}
        self.sft_groups: prm_quality.HeldoutGroups | None = None  # held-out samples of the starting model
        self.sampler_stale = True  # the vllm engine has not yet got the policy's weights (e.g. after a resume)

    def fit(self) -> dict:
        """Train to ``trainer.max_steps`` (resuming if a checkpoint says so); returns the summary."""
        return self.run.fit(self)

    def _build_models(self, checkpoint: str, tokenizer) -> stages.Models:
        """Policy and PRM start from the same SFT checkpoint (the PRM from ``prm.init_path`` when set); the
        reference is the SFT model, frozen (with LoRA the base the adapters share, adapters off)."""
        cfg = self.cfg
        mc, ds = cfg.model, cfg.deepspeed
        sampler = None
        if cfg.rollout.engine == "vllm":  # first: vLLM starts only where its share of the GPU is free (then sleeps)
            longest = planned_length(cfg.rollout.vllm, checkpoint, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens)
            sampler = VllmSampler(checkpoint, cfg.rollout.vllm, dtype=mc.dtype, seed=cfg.trainer.seed + dist.rank(),
                                  max_model_len=longest)
        roles = load_role_models(checkpoint, mc, cfg.prm, policy=True, uses_prm=cfg.algorithm.uses_prm,
                                 reference=cfg.needs_reference, seed=cfg.trainer.seed, log=log)
        policy = trainable_engine(roles.policy, ds, dtype=mc.dtype, lr=cfg.policy.learning_rate,
                                  weight_decay=cfg.policy.weight_decay, grad_clip=cfg.policy.grad_clip)
        prm = ref = None
        if roles.prm is not None:
            prm = trainable_engine(roles.prm, ds, dtype=mc.dtype, lr=cfg.prm.learning_rate,
                                   weight_decay=cfg.prm.weight_decay, grad_clip=cfg.prm.grad_clip)
        if roles.ref is not None:
            ref = frozen_model(roles.ref, ds, dtype=mc.dtype, offload=mc.offload_reference)
        synced = ds.zero_stage == 3 and dist.world_size() > 1
        return stages.Models(policy, prm, ref, tokenizer, synced, offload_reference=mc.offload_reference,
                             sampler=sampler)

    def heldout_accuracy(self) -> float:
        """Greedy held-out accuracy; NaN when there is no held-out set (data.train without data.eval)."""
        cfg = self.cfg
        if not self.eval_samples:
            return float("nan")
        accuracy = heldout_accuracy(self.models.policy.module, self.models.tokenizer, self.eval_samples,
                                    self.run.scorer, batch_size=cfg.rollout.eval_batch_size,
                                    max_new_tokens=cfg.rollout.max_new_tokens,
                                    synced_gpus=self.models.synced_generation, reward=cfg.reward,
                                    sampler=self._synced_sampler())
        self._sampler_done()
        return accuracy

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
                if self.sft_groups is None:  # at step 0 the policy is the starting model: its samples are these
                    self.sft_groups = groups if step == 0 else self._sample_heldout(m.ref)
                sft = metrics if self.sft_groups is groups else self._score_prm(self.sft_groups)[0]
                out |= {f"prm_eval_sft/{k}": v for k, v in sft.items()}
        if dist.is_main() and settings.table_rows:
            shown = prm_quality.heatmap_rows(groups, log_ratio, m.tokenizer, self.step_ends, cfg.prm.beta,
                                          settings.table_rows)
            prm_quality.save_heatmaps(shown, self.run.dir / "prm_eval" / f"step_{step:06d}")
            if self.run.logger is not None and shown:
                self.run.logger.table(step, "prm_eval/samples", *heatmap.table(shown), html_column="heatmap")
        return out

    def _sample_heldout(self, model) -> prm_quality.HeldoutGroups:
        """``prm_eval.samples_per_prompt`` responses of ``model`` (engine or module) to each evaluation prompt; with
        the vllm engine it samples them, given ``model``'s weights (the policy's again before the next rollout)."""
        cfg, m = self.cfg, self.models
        sampler = None
        if m.sampler is not None and model is m.policy:
            sampler = self._synced_sampler()
        elif m.sampler is not None:
            m.sampler.load_weights(full_named_parameters(model))
            sampler, self.sampler_stale = m.sampler, True
        groups = prm_quality.sample_heldout(getattr(model, "module", model), m.tokenizer,
                                            self.eval_samples[:cfg.prm_eval.num_prompts], self.run.scorer,
                                            cfg.prm_eval, max_new_tokens=cfg.rollout.max_new_tokens,
                                            reward=cfg.reward, synced_gpus=m.synced_generation, sampler=sampler)
        self._sampler_done()
        return groups

    def _score_prm(self, groups: prm_quality.HeldoutGroups) -> tuple[dict[str, float], torch.Tensor]:
        """The PRM's metrics on ``groups``, read against its own reference (as in training)."""
        cfg, m = self.cfg, self.models
        ref, ref_temperature = (m.ref, 1.0) if cfg.prm.reference == "sft" else (m.policy, cfg.rollout.temperature)
        return prm_quality.evaluate_prm(m.prm, ref, groups, beta=cfg.prm.beta, step_end_table=self.step_ends,
                                     micro_batch_size=cfg.prm.micro_batch_size, ref_temperature=ref_temperature,
                                     max_tokens=cfg.prm.micro_batch_tokens)

    def step(self, step: int) -> StepOutcome:
        """One PRIME iteration. Every rank runs every stage; each returns global results."""
        timings = stages.Timings()
        # generate -> verify -> filter, maybe several rounds; the dropped groups kept only to be shown
        collected = self._collect_groups(timings, keep_dropped=self._shows_rollouts(step))
        metrics, skipped, trained = collected.metrics, 0.0, None
        if collected.batch is not None:  # else no group passed the filter: nothing to learn from this step
            hook = _poison if step in self.nan_steps else None  # fault injection (PRM_RL_INJECT_NAN_STEPS)
            learned = learn(self.models, collected.batch, collected.scores, self.sections, self.step_ends,
                            self.run.shuffle, advantage_hook=hook)
            self.sampler_stale = True
            metrics, skipped = metrics | learned.metrics, learned.skipped_updates
            trained = rollout_table.Groups(collected.batch, collected.scores, True, learned.process_rewards,
                                           learned.advantages)
        self._show_rollouts(step, trained, collected.dropped)  # tracking.*: W&B table, rollouts.jsonl
        return StepOutcome(metrics | timings.metrics(), skipped, collected.generated_tokens)

    def _show_rollouts(self, step: int, trained: rollout_table.Groups | None,
                       dropped: rollout_table.Groups | None) -> None:
        """Rank 0: the step's rollouts to rollouts.jsonl (all) and, when due, to a W&B table (the first
        ``tracking.rollout_table_groups`` groups, trained and dropped); rollouts are global, so rank 0 has all."""
        t, logger, file = self.cfg.tracking, self.run.logger, self.run.rollouts_file
        if not self._shows_rollouts(step):
            return
        table_due = self._table_due(step)
        tokenizer, k = self.models.tokenizer, self.cfg.rollout.samples_per_prompt
        if file is not None:
            file.write(step, [fields for g in (trained, dropped) if g is not None
                              for fields, _ in rollout_table.rollout_rows(step, g, tokenizer)])
        if table_due:
            shown = rollout_table.table_groups(trained, dropped, t.rollout_table_groups, k)
            rows = [row for g in shown for row in rollout_table.rollout_rows(
                step, g, tokenizer, stages.step_end_mask(self.step_ends, g.rollout))]
            if rows:
                logger.table(step, "rollouts/samples", *heatmap.table(rows), html_column="heatmap")

    def _table_due(self, step: int) -> bool:
        t = self.cfg.tracking
        return self.run.logger is not None and t.rollout_table_every > 0 and step % t.rollout_table_every == 0

    def _shows_rollouts(self, step: int) -> bool:
        """This step's rollouts go to a W&B table or to rollouts.jsonl (only rank 0 has either)."""
        return self._table_due(step) or self.run.rollouts_file is not None

    def _collect_groups(self, timed: stages.Timings, keep_dropped: bool) -> Collected:
        """Sample, verify and filter rounds of prompts until ``prompts_per_step`` groups are kept or
        ``filter.fill_rounds`` is reached; returns that many buffered groups (or fewer, or none), and
        (``keep_dropped``) the groups the filter dropped."""
        cfg, m = self.cfg, self.models
        k, wanted = cfg.rollout.samples_per_prompt, cfg.rollout.prompts_per_step
        scores_all, lengths, truncated, repeats, kept_rows, failures, rounds = [], [], [], [], 0, 0, 0
        dropped = GroupBuffer(k, m.tokenizer.pad_token_id)  # shown beside the kept ones (rollout_table)
        generated_tokens = 0
        sampler = None
        if m.sampler is not None:
            with timed("weight_sync"):
                sampler = self._synced_sampler()
        while rounds < cfg.filter.fill_rounds and len(self.buffer) < wanted:
            seed = self._sampler_seed()
            prompts = self.prompts.take(wanted)
            with timed("generate"):
                r = cfg.rollout
                sampling = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                synced_gpus=m.synced_generation, sampler=sampler, seed=seed)
                if r.branch.roots:
                    rollout, drawn = stages.branched_generate_stage(
                        m.policy.module, m.tokenizer, prompts, r.branch, self.step_ends,
                        micro_batch_size=cfg.policy.micro_batch_size, max_tokens=cfg.policy.micro_batch_tokens,
                        **sampling)
                else:
                    rollout = stages.generate_stage(m.policy.module, m.tokenizer, prompts, k, **sampling)
                    drawn = rollout.response_mask.sum(dim=1)
                if r.release_cache:
                    release_cached_memory()
            with timed("verify"):
                scores, n_failed = stages.verify_stage(self.run.scorer, m.tokenizer, rollout, prompts, k)
            with timed("filter"):
                kept = stages.filter_stage(scores, rollout.truncated, k, cfg.filter, cfg.reward)
                self.buffer.add(rollout.select(kept), scores[kept])
                out = torch.ones(len(rollout), dtype=torch.bool).index_fill_(0, kept, False).nonzero().squeeze(1)
                if keep_dropped:
                    dropped.add(rollout.select(out), scores[out])
            scores_all.append(scores)
            lengths.append(rollout.response_mask.sum(dim=1).float())
            truncated.append(rollout.truncated.float())
            generated_tokens += int(drawn.sum())  # a branched leaf's shared prefix was drawn once, for its root
            repeats.append(core.repeated_ngram_fraction(rollout.response_ids, rollout.response_mask))
            kept_rows, failures, rounds = kept_rows + kept.numel(), failures + n_failed, rounds + 1
        self._sampler_done()
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
            "rollout/generated_tokens": float(generated_tokens),  # the token budget of the step's sampling
        }
        dropped_groups = rollout_table.Groups(*dropped.take(len(dropped)), kept=False) if len(dropped) else None
        if len(self.buffer) == 0:
            return Collected(None, None, metrics, generated_tokens, dropped_groups)
        batch, batch_scores = self.buffer.take(wanted)
        metrics.update({"acc/after_filter": batch_scores.mean().item(), "filter/groups": len(batch) / k,
                        "filter/carried_over_groups": float(len(self.buffer))})
        return Collected(batch, batch_scores, metrics, generated_tokens, dropped_groups)

    def _synced_sampler(self):
        """The vllm engine holding the policy's current weights (synced now if the policy changed since; every rank
        calls this: ZeRO-3 gathers collectively), or None with the hf engine."""
        m = self.models
        if m.sampler is not None and (self.sampler_stale or m.sampler.needs_weights):
            m.sampler.load_weights(full_named_parameters(m.policy))
            self.sampler_stale = False
        return m.sampler

    def _sampler_done(self) -> None:
        """Sampling is over until the next step's: rollout.vllm.sleep_level > 0 hands vLLM's GPU memory back."""
        if self.models.sampler is not None:
            self.models.sampler.sleep()

    def _sampler_seed(self) -> int:
        """This rank's vLLM seed for the next round, from the run's seed, the prompt stream's position and the
        rank: a resumed run draws what the uninterrupted one did."""
        return (self.cfg.trainer.seed * 1_000_003 + self.prompts.position) * 1009 + dist.rank()

    # --- what the run asks of this job (prm_rl.trainer.run.Job) ------------------------------------------
    def engines(self) -> dict:
        m = self.models
        return {"policy": m.policy} | ({"prm": m.prm} if m.prm is not None else {})

    def start(self) -> dict[str, float]:
        log("evaluating the starting policy on the held-out split")
        self.acc_start = self.heldout_accuracy()
        log(f"held-out accuracy at start: {self.acc_start:.3f}")
        self.prm_eval_start = self.evaluate_prm(0)
        return self.prm_eval_start

    def evaluate(self, step: int, due: bool) -> dict[str, float]:
        """Held-out accuracy when due (the final one is :meth:`finish`'s), the PRM's metrics when due and last."""
        out = {}
        if due and step < self.max_steps:
            out["eval/accuracy"] = self.heldout_accuracy()
        if due or step == self.max_steps:
            self.prm_eval_last = self.evaluate_prm(step)
            out |= self.prm_eval_last
        return out

    def state(self) -> dict:
        return {"prompt_position": self.prompts.position, "eval_accuracy_start": self.acc_start,
                "prm_eval_start": self.prm_eval_start}

    def buffer_state(self) -> dict:
        return self.buffer.state_dict()

    def load_state(self, state: dict, buffer_state: dict) -> None:
        self.buffer.load_state_dict(buffer_state)
        self.prompts.position = state["prompt_position"]
        self.acc_start = state["eval_accuracy_start"]
        self.prm_eval_start = state.get("prm_eval_start", {})

    def finish(self) -> dict:
        acc_final = self.heldout_accuracy()
        log(f"held-out accuracy: start {self.acc_start:.3f} -> final {acc_final:.3f}")
        return {
            "eval_accuracy_start": self.acc_start,
            "eval_accuracy_final": acc_final,
            "eval_size": len(self.eval_samples),
            "prm_eval_start": finite_or_none(self.prm_eval_start),
            "prm_eval_final": finite_or_none(self.prm_eval_last),
        }
