"""One run's lifecycle, the same for every trainer: what happens around the steps.

:class:`Run` owns the run directory and its lock, the resume decision, the verifier (scorer), the starting
checkpoint and tokenizer, the seeds, the metrics logger and rollouts.jsonl, stop signals, the NaN/inf guard,
the checkpoint cadence, the exports and the summary. A trainer is a :class:`Job`: it builds its models and data, runs
``step(n)``, evaluates when asked, and says what its checkpoint holds beyond the run's own counters.

Read :meth:`Run.fit` top to bottom: finished already? -> start (resume, or the starting evaluation) -> steps,
each logged, guarded, saved on schedule or on a signal -> final evaluation -> exports and ``summary.json``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from prm_rl import core
from prm_rl.config import Config
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import set_optimizer_hyperparameters
from prm_rl.models.loading import check_every_rank_sees, check_model_sources, run_tokenizer, start_checkpoint
from prm_rl.rewards import build_scorer
from prm_rl.tracking.logger import MetricsLogger
from prm_rl.tracking.rollout_table import RolloutsFile
from prm_rl.trainer import checkpoint, run_dir
from prm_rl.trainer.faults import EXIT_NONFINITE, EXIT_SIGNAL, NonFiniteGuard, RunStopped, StopSignals, on_rank0

transformers.utils.logging.disable_progress_bar()  # no per-load bars between our own progress lines


def log(msg: str) -> None:
    """A progress line, said once (by rank 0)."""
    if dist.is_main():
        print(f"[prm_rl] {msg}", flush=True)


@dataclass
class StepOutcome:
    """What one training step of a job hands back to the run."""

    metrics: dict[str, float]
    skipped_updates: float  # optimiser updates skipped for NaN/inf this step: what the guard counts
    generated_tokens: float | None = None  # tokens sampled this step, for perf/tokens_per_second (None: none)


class Job:
    """What a trainer supplies to :meth:`Run.fit`; the defaults suit a job with nothing extra to say."""

    max_steps: int  # the run ends after this many steps
    more_steps_hint = "raise trainer.max_steps"  # how to train on past a finished run

    def engines(self) -> dict[str, Any]:
        """The trained DeepSpeed engines by name (``policy``, ``prm``): checkpointed, and their optimiser
        settings taken from the config section of that name on resume."""
        raise NotImplementedError

    def exports(self) -> dict[str, Any]:
        """The engines exported in Hugging Face format at the end, as ``RUN/<name>/``."""
        return self.engines()

    def start(self) -> dict[str, float]:
        """A new run's starting evaluation; returns the metrics of the step-0 line (may be empty)."""
        return {}

    def step(self, step: int) -> StepOutcome:
        raise NotImplementedError

    def evaluate(self, step: int, due: bool) -> dict[str, float]:
        """Metrics of the periodic evaluation after ``step`` (``due``: every ``trainer.eval_every`` steps;
        also called after the last step)."""
        return {}

    def state(self) -> dict[str, Any]:
        """What the checkpoint's trainer_state.json holds beyond the run's own counters (JSON)."""
        return {}

    def buffer_state(self) -> dict[str, Any]:
        """Tensors the checkpoint holds for the next step (``buffer.pt``)."""
        return {}

    def load_state(self, state: dict[str, Any], buffer_state: dict[str, Any]) -> None:
        """Restore what :meth:`state` and :meth:`buffer_state` saved."""

    def finish(self) -> dict[str, Any]:
        """The final evaluation; returns the job's fields of ``summary.json``."""
        return {}


class Run:
    """A run directory, owned by this run, and everything a job shares with every other job.

    Built first, before any model loads, so that a bad directory, resume point, verifier, model source or
    tokenizer fails in seconds; the job then checks its data with the tokenizer, and ``inputs_accepted`` finds
    (or trains) the starting checkpoint and writes ``config.yaml``: a start rejected before it overwrites nothing.
    """

    def __init__(self, cfg: Config, raw_cfg: DictConfig, name: str):
        self.cfg, self.raw_cfg, self.started = cfg, raw_cfg, time.time()
        torch.manual_seed(cfg.trainer.seed * 1000 + dist.rank())  # sampling differs per rank, reproducibly
        # Shuffles and prompt order must agree on every rank: they use their own generator.
        self.shuffle = torch.Generator().manual_seed(cfg.trainer.seed)
        self.dir = run_dir.create(cfg.trainer.output_dir, name, log)
        log(f"run directory: {self.dir}")
        self.resume_from = on_rank0(lambda: checkpoint.find_resume_point(self.dir, cfg.trainer.resume, log))
        v = cfg.verifier
        self.scorer = build_scorer(v.tasks, num_workers=v.num_workers, timeout_s=v.timeout_s, root="verifier.tasks")
        on_rank0(lambda: check_model_sources(cfg))  # one line on every rank; the Hub asked once
        self.tokenizer = run_tokenizer(cfg)  # before the warm start: the job checks its data with it first
        self.guard = NonFiniteGuard(cfg.trainer.max_bad_steps)
        self.logger: MetricsLogger | None = None  # rank 0's, opened by fit()
        self.rollouts_file: RolloutsFile | None = None  # rank 0's with tracking.rollouts_jsonl_mb, opened by fit()

    def inputs_accepted(self) -> str:
        """Once the job's data passed its checks: the directory every model starts from (rank 0 trains the warm
        start if it is not cached: minutes, so after every check), then the resolved config saved."""
        start = on_rank0(lambda: start_checkpoint(self.cfg, log=log))
        check_every_rank_sees(start)  # several nodes: the warm start's cache must be shared
        run_dir.save_config(self.dir, self.raw_cfg)
        return start

    # --- the loop ----------------------------------------------------------------------------------------
    def fit(self, job: Job) -> dict:
        """Run ``job`` to its last step (resuming if a checkpoint says so); returns the summary."""
        finished = self.dir / "summary.json"
        if self.resume_from is not None and checkpoint.step_of(Path(self.resume_from)) >= job.max_steps \
                and finished.exists():
            log(f"{self.dir} already finished {job.max_steps} steps (summary.json): nothing to do; "
                f"{job.more_steps_hint} to train on, or set another trainer.output_dir for a new run")
            return json.loads(finished.read_text())
        try:
            with StopSignals() as signals:
                for step in range(self._start(job) + 1, job.max_steps + 1):
                    metrics = self._train_step(job, step)
                    if self.logger:
                        self.logger.log(step, metrics)
                    if self.guard.exhausted:
                        raise RunStopped(self._nonfinite_message(step), EXIT_NONFINITE)
                    self._save_or_stop(job, step, signals)
        except RunStopped:
            self.close()  # what was logged reaches W&B; the verifier workers stop
            raise
        return self._finish(job)

    def _start(self, job: Job) -> int:
        """Restore the checkpoint chosen at start-up, or run the job's starting evaluation; returns the last
        step done."""
        state: dict[str, Any] = {}
        if self.resume_from is not None:
            state = self._resume(job, Path(self.resume_from))
        done = state.get("step", 0)
        cfg = self.cfg
        if dist.is_main():
            self.logger = MetricsLogger(self.dir, total_steps=job.max_steps, start_step=done,
                                        wandb_mode=cfg.wandb.mode, project=cfg.wandb.project,
                                        entity=cfg.wandb.entity, name=cfg.wandb.name or self.dir.name,
                                        config=OmegaConf.to_container(self.raw_cfg, resolve=True),
                                        progress_bar=cfg.trainer.progress_bar, run_id=state.get("wandb_run_id"))
            if cfg.tracking.rollouts_jsonl_mb > 0:
                self.rollouts_file = RolloutsFile(self.dir / "rollouts.jsonl", cfg.tracking.rollouts_jsonl_mb,
                                                  start_step=done, log=log)
        if self.resume_from is None:
            first = job.start()
            if self.logger and first:
                self.logger.record(0, first)
        return done

    def _resume(self, job: Job, path: Path) -> dict[str, Any]:
        for change in checkpoint.config_changes(path, self.raw_cfg) if dist.is_main() else []:
            log(f"config differs from the checkpoint's: {change}")
        state, buffer_state, rng = checkpoint.load(path, job.engines(), run_dir=self.dir,
                                                   seed=self.cfg.trainer.seed, log=log)
        for name in job.engines():  # the config's optimiser settings win over the saved ones (each step sets them)
            section = getattr(self.cfg, name)
            log(f"{name} optimiser after resume: learning_rate={section.learning_rate:g} "
                f"(lr_schedule {section.lr_schedule.decay}), weight_decay={section.weight_decay:g} (from the config)")
        self.guard.consecutive, self.guard.total = state["bad_steps_in_a_row"], state["bad_steps_total"]
        self.started = time.time() - state["wall_seconds"]  # wall_seconds counts time spent training
        checkpoint.set_rng_state(rng, self.shuffle)
        job.load_state(state, buffer_state)
        log(f"resumed from {path} (step {state['step']} of {job.max_steps})")
        return state

    def _train_step(self, job: Job, step: int) -> dict[str, float]:
        """The job's step at its scheduled learning rates, plus its time, throughput, guard counters and the
        periodic evaluation."""
        rates = self._set_learning_rates(job, step)
        t0 = time.time()
        outcome = job.step(step)
        metrics = outcome.metrics | rates
        metrics["time/step"] = time.time() - t0
        if outcome.generated_tokens is not None:
            metrics["perf/tokens_per_second"] = outcome.generated_tokens / metrics["time/step"]
        metrics.update(self.guard.update(outcome.skipped_updates))
        every = self.cfg.trainer.eval_every
        metrics.update(job.evaluate(step, due=bool(every) and step % every == 0))
        return metrics

    def _set_learning_rates(self, job: Job, step: int) -> dict[str, float]:
        """Each trained engine's learning rate for ``step`` from its config section's ``lr_schedule`` (a function
        of the step alone, so a resumed run continues the schedule exactly); returned as ``NAME/lr``."""
        rates = {}
        for name, engine in job.engines().items():
            section = getattr(self.cfg, name)
            schedule = section.lr_schedule
            share = core.lr_multiplier(step, job.max_steps, schedule.decay,
                                       core.warmup_steps_of(schedule.warmup_steps, job.max_steps),
                                       schedule.min_lr_ratio)
            set_optimizer_hyperparameters(engine, lr=section.learning_rate * share, weight_decay=section.weight_decay)
            rates[f"{name}/lr"] = section.learning_rate * share
        return rates

    def _save_or_stop(self, job: Job, step: int, signals: StopSignals) -> None:
        """Checkpoint on schedule (never mid NaN streak) or on a stop signal seen by any rank; then stop."""
        stop = bool(dist.all_reduce_max(torch.tensor([signals.received is not None])).item())
        every = self.cfg.trainer.checkpoint_every
        due = step == job.max_steps or (every and step % every == 0)
        if stop or (due and self.guard.consecutive == 0):
            saved = self._save(job, step)
        if stop:
            raise RunStopped(f"stopped by {signals.received or 'a signal on another rank'} after step {step}; "
                             f"saved {saved}. Run the same command again to resume (trainer.resume=auto)",
                             EXIT_SIGNAL)

    def _nonfinite_message(self, step: int) -> str:
        found = checkpoint.complete(self.dir)
        last = f"the last checkpoint, {found[-1]}, is intact" if found else "no checkpoint was written yet"
        return (f"stopping at step {step}: {self.guard.consecutive} steps in a row had NaN/inf losses or gradients "
                f"(trainer.max_bad_steps={self.cfg.trainer.max_bad_steps}), their updates were skipped; {last}")

    def _save(self, job: Job, step: int) -> Path:
        state = {
            "step": step,
            **job.state(),
            "bad_steps_in_a_row": self.guard.consecutive,
            "bad_steps_total": self.guard.total,
            "wandb_run_id": self.logger.run_id if self.logger else None,
            "world_size": dist.world_size(),
            "wall_seconds": round(time.time() - self.started, 1),
        }
        return checkpoint.save(self.dir, step, engines=job.engines(), tokenizer=self.tokenizer,
                               trainer_state=state, buffer_state=job.buffer_state(),
                               rng=checkpoint.rng_state(self.shuffle), config=self.raw_cfg,
                               keep=self.cfg.trainer.keep_checkpoints, log=log,
                               hf_export=self.cfg.trainer.checkpoint_hf)

    # --- the end -----------------------------------------------------------------------------------------
    def _finish(self, job: Job) -> dict:
        fields = job.finish()
        for name, engine in job.exports().items():
            run_dir.save_hf_model(engine, self.tokenizer, self.dir / name, adapters=self.dir / "adapters")
        summary = {
            "steps": job.max_steps,
            **fields,
            "wall_seconds": round(time.time() - self.started, 1),
            "world_size": dist.world_size(),
            "command": run_dir.command_line(),
        }
        if dist.is_main():
            run_dir.write_json(self.dir / "summary.json", summary)
            config = OmegaConf.to_container(self.raw_cfg, resolve=True)
            for name in job.exports():
                (self.dir / name / "README.md").write_text(run_dir.model_card(name, summary, config))
            self.logger.summary(summary)
        self.close()
        log(f"done: {self.dir}")
        return summary

    def close(self) -> None:
        if self.logger:
            self.logger.close()
        self.scorer.close()
