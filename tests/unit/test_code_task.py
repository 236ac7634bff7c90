"""The built-in code task: its splits, its demonstrations under the real code verifier, its tokenizer, and
that adding it left the arithmetic warm start's cache key (and so the measured results) untouched."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from prm_rl.config import register_schema, to_config
from prm_rl.data import arithmetic, code_task
from prm_rl.data.prompts import builtin_splits
from prm_rl.data.sample import Sample
from prm_rl.models.tiny import SPECIAL_TOKENS, TinyModelConfig, build_char_tokenizer
from prm_rl.models.warm_start import _spec, cache_path
from prm_rl.rewards import build_scorer

REPO = Path(__file__).resolve().parents[2]
CFG = code_task.CodeConfig()
MAX_RESPONSE_CHARS = 95  # code_ppo's rollout.max_new_tokens (96) minus the EOS token

register_schema()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "prm_rl" / "recipes"), version_base=None):
        return to_config(compose(config_name="base", overrides=list(overrides)), world_size=1)


@pytest.fixture(scope="module")
def heldout() -> list[code_task.Problem]:
    return code_task.heldout_problems(CFG, 256, seed=1234)


def test_splits_are_deterministic_and_disjoint():
    a = builtin_splits(CFG, train_size=2000, eval_size=256, seed=7)
    b = builtin_splits(CFG, train_size=2000, eval_size=256, seed=7)
    assert a == b
    prompts = [s.prompt for s in a.train + a.eval]
    assert len(set(prompts)) == len(prompts)  # distinct, so no held-out prompt is trained on
    assert {s.task for s in a.train + a.eval} == {"code"}


def test_problem_format(heldout):
    p = heldout[0]
    shown = [int(t.split("=")[1]) for t in p.question.split("\n")[1].split()]
    assert p.question.startswith("f(x)=a*x+b\n") and shown == [p.f(x) for x in p.xs]
    assert list(p.xs) == sorted(set(p.xs)) and 0 not in p.xs
    assert len(p.tests) == 2 * (CFG.num_examples + 1)
    assert all(1 <= q.slope <= CFG.max_slope and 0 <= q.intercept <= CFG.max_intercept for q in heldout)


def test_solutions_fit_the_response_budget_and_the_tokenizer(heldout):
    vocab = set(code_task.CHARACTERS)
    for p in heldout:
        assert len(p.solution) <= MAX_RESPONSE_CHARS
        assert set(code_task.prompt_text(p) + p.solution) <= vocab
    tokenizer = build_char_tokenizer(code_task.CHARACTERS)
    text = code_task.prompt_text(heldout[0]) + heldout[0].solution
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text


def test_real_verifier_gives_full_and_partial_credit(heldout):
    problems = heldout[:4]
    samples = [code_task.to_sample(p) for p in problems]
    right = [p.solution for p in problems]
    wrong_intercept = [code_task.function_response(p.slope, p.intercept + 1) for p in problems]
    wrong_slope = [code_task.function_response(p.slope + 1, p.intercept) for p in problems]
    with build_scorer({"code": {"partial": "all"}}, num_workers=2) as scorer:
        result = scorer.score(samples * 3, right + wrong_intercept + wrong_slope)
    assert result.failures == [None] * 12
    assert result.scores[:4] == [1.0] * 4
    assert result.scores[4:8] == [0.5] * 4  # every slope test passes, no value test does
    assert all(0.0 < s < 0.5 for s in result.scores[8:])  # only f(0) (the intercept) passes


def test_task_config_follows_task_name():
    cfg = composed("task.name=code", "task.code.max_slope=5", "task.code.max_intercept=10")
    assert cfg.task.selected == code_task.CodeConfig(max_slope=5, max_intercept=10)


def test_code_warm_start_has_its_own_cache_key():
    cfg = composed("task.name=code")
    spec = _spec(TinyModelConfig(**asdict(cfg.model.tiny)), cfg.task.selected, asdict(cfg.warm_start),
                 heldout_seed=cfg.task.seed, heldout_size=cfg.task.eval_size)
    assert spec["task_name"] == "code"


def test_arithmetic_warm_start_cache_key_and_vocabulary_unchanged():
    """docs/results.md was measured with the warm start cached under this digest: it must not move."""
    cfg = composed()
    spec = _spec(TinyModelConfig(**asdict(cfg.model.tiny)), cfg.task.selected, asdict(cfg.warm_start),
                 heldout_seed=cfg.task.seed, heldout_size=cfg.task.eval_size)
    assert "task_name" not in spec
    assert cache_path("/cache", spec).name == "157d95673942b2fc"
    vocab = build_char_tokenizer(arithmetic.CHARACTERS).get_vocab()
    assert vocab == {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list("0123456789+-*=?\n\\boxed{}"))}
    assert code_task.CHARACTERS[:len(arithmetic.CHARACTERS)] == arithmetic.CHARACTERS


def test_sample_fields_are_plain_assert_strings(heldout):
    sample = code_task.to_sample(heldout[0])
    assert isinstance(sample, Sample) and all(t.startswith("assert f(") for t in sample.fields["tests"])
