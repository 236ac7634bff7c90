"""bench/rollout_throughput.py runs on a tiny budget (its numbers are not checked), and the decode loop it
measured, now our generate's, samples as ``model.generate`` does."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tiny_runs import REPO


@pytest.fixture()
def tiny_model_dir(tmp_path):
    """A random 1-layer model with the arithmetic task's character tokenizer, saved as a checkpoint."""
    from prm_rl.data import arithmetic
    from prm_rl.models.tiny import TinyModelConfig, build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer(arithmetic.CHARACTERS)
    shape = TinyModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=32)  # head_dim 32: vLLM CPU
    build_tiny_model(shape, tokenizer, seed=0).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_rollout_bench_runs_on_a_tiny_budget(tmp_path, tiny_model_dir):
    sys.path.insert(0, str(REPO / "bench"))
    from rollout_throughput import DEFAULT_VARIANTS, VARIANTS

    variants = list(VARIANTS) if importlib.util.find_spec("vllm") else DEFAULT_VARIANTS  # vllm: when installed
    out = tmp_path / "rollout"
    proc = subprocess.run([sys.executable, "bench/rollout_throughput.py", "--model", str(tiny_model_dir),
                           "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--repeats", "1",
                           "--variants", *variants, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["dropped"]) <= {"compile"}, report["dropped"]  # compile needs a C++ compiler
    assert set(report["summary"]) | set(report["dropped"]) == set(variants)
    assert report["summary"]["bare"]["ratio_to_bare"]["median"] == 1.0
    assert report["branch_cached_speedup"]["median"] > 0  # both branched variants ran, paired by round
    assert all(len(report["trials"][v]) == 1 and report["trials"][v][0]["tokens"] > 0 for v in report["summary"])
    table = out.with_suffix(".md").read_text()
    assert all(f"| {v} |" in table for v in report["summary"])
    assert out.with_suffix(".png").stat().st_size > 1000


def test_dropping_finished_rows_decodes_as_model_generate(tiny_model_dir, monkeypatch):
    """Greedy: the same responses, rows leaving the batch at EOS included. Sampling: with an EOS that never comes
    (so no row leaves), the same draws from the same seed: temperature, top-p and top_k=0 as generate's."""
    from transformers import AutoModelForCausalLM

    from prm_rl.rollout import generate as module
    from prm_rl.rollout.generate import Rollout, can_drop_finished_rows, generate, hf_generate, sample_dropping_finished

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():  # sharpen the random model: at its init scale, even wrong positions pick the same tokens
        for weight in model.parameters():
            weight.mul_(10.0)
    assert can_drop_finished_rows(model)
    ids = torch.randint(3, model.config.vocab_size, (32, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[::3, :3] = 0  # left padding on a third of the rows
    ids = ids.masked_fill(mask == 0, 0)
    never = 10_000  # an EOS id no row emits
    free = hf_generate(model, ids, mask, max_new_tokens=24, eos_id=never, pad_id=0, do_sample=False,
                       temperature=1.0, top_p=1.0, synced_gpus=False)
    eos = next(t for t in range(model.config.vocab_size) if 0 < (free == t).any(dim=1).sum() < len(free))
    greedy = generate(model, ids, mask, max_new_tokens=24, eos_id=eos, pad_id=0, do_sample=False)
    assert greedy.response_mask.sum(dim=1).min() < 24 and greedy.truncated.any()  # rows left the batch early
    monkeypatch.setattr(module, "can_drop_finished_rows", lambda model: False)  # generate's model.generate path
    reference = generate(model, ids, mask, max_new_tokens=24, eos_id=eos, pad_id=0, do_sample=False)
    assert isinstance(greedy, Rollout)
    for field in ("response_ids", "response_mask", "truncated"):
        assert torch.equal(getattr(greedy, field), getattr(reference, field)), field

    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        kw = dict(max_new_tokens=16, eos_id=never, pad_id=0, do_sample=True, temperature=temperature, top_p=top_p)
        torch.manual_seed(1)
        theirs = hf_generate(model, ids, mask, synced_gpus=False, **kw)
        torch.manual_seed(1)
        assert torch.equal(sample_dropping_finished(model, ids, mask, **kw), theirs)
