"""Where is the edge of a model's competence on the built-in arithmetic task? Greedy and sampled accuracy by chain
length, and how many steps a response gets right before its first wrong one (docs/benchmarks.md, "Where dense
credit pays"):

    python bench/competence.py --model ~/.cache/prm_rl/warm_start/HASH --lengths 4 5 6 7 8 10 \
        --out docs/benchmarks/competence_sft2-6

Per length: ``--prompts`` held-out problems of exactly that many operations (seed ``--seed``), one greedy response
and ``--samples`` sampled ones (temperature 1, as training samples) each, judged by the task's verifier and step
checker. Writes OUT.json, OUT.md (the table) and OUT.png (accuracy against chain length).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import pyplot, write_report  # noqa: E402


def measure(model, tokenizer, length: int, prompts: int, samples: int, seed: int) -> dict:
    """Greedy accuracy, sampled pass@1 and the mean number of right steps before the first wrong one (sampled)."""
    import torch

    from prm_rl.data import arithmetic
    from prm_rl.data.sample import encode_prompts
    from prm_rl.rollout.generate import generate, left_pad

    problems = arithmetic.heldout_problems(arithmetic.ArithmeticConfig(min_steps=length, max_steps=length), prompts,
                                           seed=seed)
    ids, mask = left_pad(encode_prompts(tokenizer, [arithmetic.prompt_text(p) for p in problems]),
                         tokenizer.pad_token_id)
    budget = dict(max_new_tokens=14 * length + 20, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)

    def judge(rollout, rows) -> list[int | None]:
        texts = [tokenizer.decode(rollout.response_ids[i][rollout.response_mask[i].bool()], skip_special_tokens=True)
                 for i in range(len(rows))]
        return [arithmetic.first_wrong_step(p.question, t) for p, t in zip(rows, texts)]

    greedy = judge(generate(model, ids, mask, do_sample=False, **budget), problems)
    torch.manual_seed(seed)
    many = [p for p in problems for _ in range(samples)]
    sampled = judge(generate(model, ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0),
                             do_sample=True, temperature=1.0, **budget), many)
    right_steps = [length if f is None else min(f - 1, length) for f in sampled]
    return {"length": length, "greedy": sum(f is None for f in greedy) / len(greedy),
            "sampled_pass1": sum(f is None for f in sampled) / len(sampled),
            "sampled_all_wrong_group8": sum((1 - sum(f is None for f in sampled[i:i + samples]) / samples) ** 8
                                            for i in range(0, len(sampled), samples)) / len(problems),
            "right_steps_mean": sum(right_steps) / len(right_steps)}


def table(rows: list[dict]) -> str:
    lines = ["| operations | greedy accuracy | sampled pass@1 | P(group of 8 all wrong) | right steps before the "
             "first wrong one (sampled) |", "|---|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['greedy']:.3f} | {r['sampled_pass1']:.3f} | {r['sampled_all_wrong_group8']:.2f} "
              f"| {r['right_steps_mean']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = [r["length"] for r in rows]
    ax.plot(lengths, [r["greedy"] for r in rows], marker="o", label="greedy accuracy")
    ax.plot(lengths, [r["sampled_pass1"] for r in rows], marker="o", label="sampled pass@1 (T=1)")
    ax.set_xlabel("operations in the chain")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint folder (model and tokenizer)")
    parser.add_argument("--lengths", type=int, nargs="+", required=True, help="chain lengths (operations)")
    parser.add_argument("--prompts", type=int, default=128, help="held-out problems per length")
    parser.add_argument("--samples", type=int, default=4, help="sampled responses per problem")
    parser.add_argument("--seed", type=int, default=99, help="problems and sampling")
    parser.add_argument("--out", type=Path, required=True, help="OUT.json/.md/.png")
    args = parser.parse_args()
    from prm_rl.models.loading import load_causal_lm, load_tokenizer

    if not (args.model.expanduser() / "config.json").exists():
        sys.exit(f"--model {args.model}: no config.json there (a checkpoint folder with model and tokenizer)")
    model = load_causal_lm(str(args.model.expanduser()), "float32").eval()
    tokenizer = load_tokenizer(str(args.model.expanduser()))
    rows = [measure(model, tokenizer, n, args.prompts, args.samples, args.seed) for n in args.lengths]
    write_report(args.out, {"command": " ".join(sys.argv), "rows": rows}, table(rows), lambda: plot(rows))


if __name__ == "__main__":
    main()
