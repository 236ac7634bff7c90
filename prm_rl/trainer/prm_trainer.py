"""Offline implicit PRM training (``launch/train_prm.py``): outcome-labelled responses in, a PRM out.

The Implicit PRM recipe (Yuan et al. 2024, arXiv 2412.01981): train a language model pi_phi on
(prompt, response, outcome label) rows with the CE loss on r(y) = beta * sum_t log(pi_phi / pi_ref) (or the
pairwise dpo loss within a prompt's responses), and read its step rewards q_k - q_{k-1} for free. The update
is the online trainer's own (:func:`prm_rl.trainer.stages.prm_update_stage`), so a PRM trained here means the
same thing inside PRIME (``prm.init_path=RUN/prm``).

Read :class:`PrmTrainer` top to bottom: labelled rows (read from ``prm_train.data``, or sampled from the
starting model and labelled by the verifier, then kept in ``RUN/prm_data/``), reference log-probs once, then
``prm_train.epochs`` passes of optimiser steps over whole prompts. Checkpoints, resume, stop signals and the
NaN guard are the run's (:class:`prm_rl.trainer.run.Run`), as in the RL trainer. Held-out PRM metrics
(docs/prm_eval.md) on samples of the starting model at the start, every ``trainer.eval_every`` steps and at the
end; ``summary.json`` adds the data, the loss per epoch and the compute spent (:mod:`prm_rl.cost`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig

from prm_rl import cost
from prm_rl.config import Config, PrmEvalSection
from prm_rl.data.labelled import LabelledRows, load_labelled
from prm_rl.data.prompts import PromptSplits
from prm_rl.data.sample import Sample, text_rollout
from prm_rl.data.splits import load_prompt_splits
from prm_rl.engine import dist
from prm_rl.engine.deepspeed_engine import frozen_model, trainable_engine
from prm_rl.errors import ConfigError
from prm_rl.rollout.generate import Rollout
from prm_rl.tracking.logger import finite_or_none
from prm_rl.evaluation import prm_quality
from prm_rl.trainer import stages
from prm_rl.trainer.roles import load_role_models
from prm_rl.trainer.run import Job, Run, StepOutcome, log


@dataclass
class TrainingSet:
    """Labelled rows as token tensors, groups of ``k`` contiguous rows."""

    batch: Rollout  # [N]
    labels: torch.Tensor  # [N] in [0, 1]
    k: int
    sampling_flops: float  # compute spent making the rows (0 when read from a file)
    sampling_seconds: float


class PrmTrainer(Job):
    """Offline PRM training as a :class:`~prm_rl.trainer.run.Job`: one step is one PRM optimiser step."""

    more_steps_hint = "raise prm_train.epochs"

    def __init__(self, cfg: Config, raw_cfg: DictConfig, name: str = "prm"):
        if cfg.prm.reference != "sft":
            raise ConfigError(f"prm.reference={cfg.prm.reference}: offline PRM training has no rollout policy; "
                              "its reference is the frozen starting model (prm.reference=sft)")
        self.cfg = cfg
        self.run = run = Run(cfg, raw_cfg, name)
        self.tokenizer = run.tokenizer
        labelled = None
        if cfg.prm_train.data is not None:  # a bad file fails here, before any model loads
            labelled = load_labelled(cfg.prm_train.data, cfg.prm_train.fields, needs_groups=cfg.prm.loss == "dpo")
        no_prompts = cfg.model.path is not None and cfg.data.train is None  # rows from a file, no evaluation
        splits = (PromptSplits([], []) if no_prompts
                  else load_prompt_splits(cfg.data, cfg.task, self.tokenizer, run.scorer, log))
        self.reference_path = run.inputs_accepted()
        mc = cfg.model
        p = cfg.prm
        roles = load_role_models(self.reference_path, mc, p, policy=False, uses_prm=True, reference=True,
                                 seed=cfg.trainer.seed, log=log)
        self.prm = trainable_engine(roles.prm, cfg.deepspeed, dtype=mc.dtype, lr=p.learning_rate,
                                    weight_decay=p.weight_decay, grad_clip=p.grad_clip)
        self.ref = frozen_model(roles.ref, cfg.deepspeed, dtype=mc.dtype)
        self.sampler = getattr(self.ref, "module", self.ref)  # the starting model, bare, for generate()
        self.synced = cfg.deepspeed.zero_stage == 3 and dist.world_size() > 1  # ZeRO-3 generation in lockstep
        self.step_ends = stages.step_end_table(self.tokenizer, cfg.reward.step_delimiter)
        self.data = self._training_set(labelled, splits.train)
        self.ref_logp = stages.logprob_stage(self.ref, self.data.batch, p.micro_batch_size,
                                             max_tokens=p.micro_batch_tokens)
        self.heldout = self._heldout_groups(splits.eval)
        groups = len(self.data.labels) // self.data.k
        per_update = max(1, cfg.prm_train.prompts_per_update * (1 if self.data.k > 1 else _mean_group(labelled)))
        self.steps_per_epoch = math.ceil(groups / per_update)
        self.groups_per_step = per_update
        self.max_steps = cfg.prm_train.epochs * self.steps_per_epoch
        self.eval_start: dict[str, float] = {}
        self.eval_last: dict[str, float] = {}
        self.loss_sums: dict[int, list[float]] = {}  # epoch -> [sum of step losses, steps]

    def fit(self) -> dict:
        """Train ``prm_train.epochs`` passes (resuming if a checkpoint says so); save the PRM and a summary."""
        return self.run.fit(self)

    # --- data -------------------------------------------------------------------------------------------
    def _training_set(self, labelled: LabelledRows | None, prompts: list[Sample]) -> TrainingSet:
        """The file's rows, or ``prm_train.samples_per_prompt`` samples of the starting model per prompt, labelled
        by the verifier. Samples are saved to ``RUN/prm_data/`` (tokens.pt, and rows.jsonl to read or reuse as
        ``prm_train.data``) and read back on resume, so a resumed run trains on the very same rows."""
        if labelled is not None:
            batch = text_rollout(self.tokenizer, labelled.prompts, labelled.responses)
            log(f"prm data: {len(labelled.responses)} rows, {labelled.num_groups} prompts x {labelled.group_size} "
                f"from {self.cfg.prm_train.data}, label mean {float(labelled.labels.mean()):.3f}")
            return TrainingSet(batch, labelled.labels, labelled.group_size, 0.0, 0.0)
        folder = self.run.dir / "prm_data"
        saved = folder / "tokens.pt"
        if saved.exists():
            state = torch.load(saved, weights_only=False)
            log(f"prm data: {len(state['labels'])} sampled rows read back from {saved}")
            return TrainingSet(Rollout(**state["batch"]), state["labels"], state["k"], state["flops"], state["seconds"])
        t = self.cfg.prm_train
        if len(prompts) < t.num_prompts:
            log(f"warning: prm_train.num_prompts={t.num_prompts}, only {len(prompts)} training prompts exist")
        started = time.time()
        settings = PrmEvalSection(samples_per_prompt=t.samples_per_prompt, temperature=self.cfg.rollout.temperature,
                                  seed=self.cfg.trainer.seed)
        sampled = prm_quality.sample_heldout(self.sampler, self.tokenizer, prompts[:t.num_prompts], self.run.scorer,
                                          settings, reward=self.cfg.reward,
                                          max_new_tokens=self.cfg.rollout.max_new_tokens, synced_gpus=self.synced)
        labels = sampled.labels  # the PRM learns the scores' [0, 1] labels (a reward model's logits: by a rule)
        data = TrainingSet(sampled.rollout, labels, sampled.k,
                           cost.forward_flops(cost.parameter_count(self.sampler), cost.tokens(sampled.rollout)),
                           time.time() - started)
        if dist.is_main():
            folder.mkdir(exist_ok=True)
            LabelledRows([s.prompt for s in sampled.samples], sampled.responses, labels,
                         sampled.k).write_jsonl(folder / "rows.jsonl")
            state = {"batch": vars(data.batch), "labels": data.labels, "k": data.k, "flops": data.sampling_flops,
                     "seconds": data.sampling_seconds}
            torch.save(state, folder / "tokens.tmp")
            (folder / "tokens.tmp").replace(saved)
        dist.barrier()
        log(f"prm data: sampled {len(data.labels)} responses ({len(data.labels) // data.k} prompts x {data.k}) in "
            f"{data.sampling_seconds:.0f} s, label mean {float(data.labels.mean()):.3f}; saved in {folder}")
        return data

    def _heldout_groups(self, prompts: list[Sample]) -> prm_quality.HeldoutGroups | None:
        """Samples of the starting model on held-out prompts, drawn once: every evaluation judges the same."""
        e = self.cfg.prm_eval
        if min(len(prompts), e.num_prompts) < dist.world_size():
            return None
        return prm_quality.sample_heldout(self.sampler, self.tokenizer, prompts[:e.num_prompts], self.run.scorer, e,
                                       reward=self.cfg.reward, max_new_tokens=self.cfg.rollout.max_new_tokens,
                                       synced_gpus=self.synced)

    def heldout_metrics(self) -> dict[str, float]:
        if self.heldout is None:
            return {}
        metrics, _ = prm_quality.evaluate_prm(self.prm, self.ref, self.heldout, beta=self.cfg.prm.beta,
                                           step_end_table=self.step_ends,
                                           micro_batch_size=self.cfg.prm.micro_batch_size,
                                           max_tokens=self.cfg.prm.micro_batch_tokens)
        return {f"prm_eval/{k}": v for k, v in metrics.items()}

    # --- training ---------------------------------------------------------------------------------------
    def step(self, step: int) -> StepOutcome:
        """One optimiser step of the PRM on ``prm_train.prompts_per_update`` prompts of this epoch's order."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        order = torch.randperm(len(self.data.labels) // self.data.k,
                               generator=torch.Generator().manual_seed(self.cfg.trainer.seed * 1000 + epoch))
        groups = order[index * self.groups_per_step:(index + 1) * self.groups_per_step]
        k = self.data.k
        rows = (groups[:, None] * k + torch.arange(k)).reshape(-1)
        settings = replace(self.cfg.prm, mini_batches=1, epochs=1)
        _, metrics, skipped = stages.prm_update_stage(self.prm, self.data.batch.select(rows), self.data.labels[rows],
                                                      self.ref_logp[rows], k, settings, self.step_ends,
                                                      self.run.shuffle)
        sums = self.loss_sums.setdefault(epoch, [0.0, 0.0])
        sums[0], sums[1] = sums[0] + metrics["prm/loss"], sums[1] + 1
        return StepOutcome(metrics | {"prm/epoch": epoch + (index + 1) / self.steps_per_epoch}, skipped)

    # --- what the run asks of this job (prm_rl.trainer.run.Job) ------------------------------------------
    def engines(self) -> dict:
        return {"prm": self.prm}

    def start(self) -> dict[str, float]:
        self.eval_start = self.heldout_metrics()
        return self.eval_start

    def evaluate(self, step: int, due: bool) -> dict[str, float]:
        if due or step == self.max_steps:
            self.eval_last = self.heldout_metrics()
            return self.eval_last
        return {}

    def state(self) -> dict:
        return {"prm_eval_start": self.eval_start, "loss_sums": self.loss_sums}

    def load_state(self, state: dict, buffer_state: dict) -> None:
        self.eval_start = state["prm_eval_start"]
        self.loss_sums = {int(epoch): sums for epoch, sums in state["loss_sums"].items()}  # JSON keys: str

    def finish(self) -> dict:
        params = cost.parameter_count(self.prm.module)
        trained_tokens = cost.tokens(self.data.batch)
        training = (cost.training_flops(params, trained_tokens) * self.cfg.prm_train.epochs
                    + cost.forward_flops(params, trained_tokens))  # + the reference's one pass
        prm_dir = self.run.dir / "prm"
        log(f"the PRM is {prm_dir} (reference {self.reference_path}); use it in PRIME with prm.init_path={prm_dir}")
        return {
            "epochs": self.cfg.prm_train.epochs,
            "rows": len(self.data.labels),
            "prompts": len(self.data.labels) // self.data.k,
            "label_mean": float(self.data.labels.mean()),
            "loss_per_epoch": [s / max(n, 1) for _, (s, n) in sorted(self.loss_sums.items())],
            "prm_eval_start": finite_or_none(self.eval_start),
            "prm_eval_final": finite_or_none(self.eval_last),
            "prm": str(prm_dir),
            "reference": self.reference_path,
            "beta": self.cfg.prm.beta,
            "loss": self.cfg.prm.loss,
            "cost": {"parameters": params, "data_flops": self.data.sampling_flops,
                     "data_seconds": round(self.data.sampling_seconds, 1), "training_flops": training},
        }


def _mean_group(labelled: LabelledRows | None) -> int:
    """Rows per prompt on average: a step over prompts of uneven size takes this many rows per prompt."""
    if labelled is None:
        return 1
    return max(1, round(len(labelled.responses) / len(set(labelled.prompts))))
