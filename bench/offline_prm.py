"""An implicit PRM trained offline on outcome labels of the SFT model's own samples, then used for best-of-N.

    python bench/offline_prm.py --sft SFT_DIR --seeds 0 1 2 --out runs/offline_prm

Per seed: sample ``--samples`` responses to each of the first ``--prompts`` prompts of the built-in task's RL
(training) split from the SFT model, label them with the verifier, and train a copy of the SFT model as an
implicit PRM on them (``--loss`` ce or dpo, beta ``prm.beta``, reference = the SFT model, ``--epochs`` passes,
one optimiser step per ``--group-batch`` prompts): the same update the online trainer runs
(:func:`prm_rl.trainer.stages.prm_update_stage`). Saves OUT/seed-S/prm (a Hugging Face directory) and
OUT/seed-S/train.json (data size, label mean, loss per epoch). Then ``bench/best_of_n.py --runs OUT/seed-*``
evaluates them on the held-out split, which is disjoint from these prompts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from prm_rl.config import DeepSpeedSection, PrmEvalSection, PrmSection, RolloutSection, TaskSection
from prm_rl.data.prompts import builtin_splits
from prm_rl.models.loading import load_causal_lm, load_tokenizer
from prm_rl.rewards import build_scorer

with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints a notice on stdout at import
    from prm_rl.engine import dist
    from prm_rl.engine.deepspeed_engine import trainable_engine
    from prm_rl.trainer import prm_eval, stages


def train_one(args, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    task = TaskSection()
    prompts = builtin_splits(task.selected, train_size=args.prompts, eval_size=task.eval_size,
                             seed=task.seed).train[:args.prompts]
    tokenizer = load_tokenizer(args.sft)
    sft = load_causal_lm(args.sft, "float32").eval()
    started = time.time()
    with build_scorer() as scorer:  # the responses, labelled: the PRM's whole training set
        data = prm_eval.sample_heldout(sft, tokenizer, prompts, scorer,
                                       PrmEvalSection(samples_per_prompt=args.samples, seed=seed),
                                       max_new_tokens=RolloutSection.max_new_tokens)
    k, batch, labels = args.samples, data.rollout, data.scores
    with torch.no_grad():
        ref_logp = stages.logprob_stage(sft, batch, PrmSection.micro_batch_size)
    settings = PrmSection(loss=args.loss, learning_rate=args.lr, mini_batches=1)
    prm = trainable_engine(load_causal_lm(args.sft, "float32"), DeepSpeedSection(), dtype="float32", lr=args.lr,
                           weight_decay=settings.weight_decay, grad_clip=settings.grad_clip)
    shuffle = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(args.epochs):
        order = torch.randperm(len(prompts), generator=shuffle)
        epoch = []
        for start in range(0, len(prompts), args.group_batch):
            groups = order[start:start + args.group_batch]
            rows = (groups[:, None] * k + torch.arange(k)).reshape(-1)
            _, metrics, _ = stages.prm_update_stage(prm, batch.select(rows), labels[rows], ref_logp[rows], k,
                                                    settings, shuffle)
            epoch.append(metrics["prm/loss"])
        losses.append(sum(epoch) / len(epoch))
    prm.module.save_pretrained(out / "prm")
    tokenizer.save_pretrained(out / "prm")
    record = {"seed": seed, "prompts": len(prompts), "samples_per_prompt": k, "label_mean": float(labels.mean()),
              "loss": args.loss, "learning_rate": args.lr, "epochs": args.epochs, "group_batch": args.group_batch,
              "loss_per_epoch": losses, "seconds": time.time() - started}
    (out / "train.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", required=True, help="the SFT model: sampler, PRM initialisation and reference")
    parser.add_argument("--prompts", type=int, default=1024, help="training prompts (RL split of the built-in task)")
    parser.add_argument("--samples", type=int, default=8, help="responses sampled and labelled per prompt")
    parser.add_argument("--loss", choices=("ce", "dpo"), default="ce", help="PRM loss (prm.loss)")
    parser.add_argument("--lr", type=float, default=1e-4, help="PRM learning rate (the main job's)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the labelled responses")
    parser.add_argument("--group-batch", type=int, default=32, help="prompts (groups) per optimiser step")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one PRM per seed (data and order)")
    parser.add_argument("--out", type=Path, required=True, help="OUT/seed-S/{prm,train.json}")
    args = parser.parse_args()
    dist.init()
    for seed in args.seeds:
        record = train_one(args, seed, args.out / f"seed-{seed}")
        print(json.dumps(record))


if __name__ == "__main__":
    main()
