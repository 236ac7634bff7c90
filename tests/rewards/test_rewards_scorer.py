"""build_scorer / Scorer: registry, dispatch, the worker pool, failures and time limits (real processes)."""
import time

import pytest

from prm_rl.data.sample import Sample
from prm_rl.rewards import ScoreResult, VerifierConfigError, build_scorer

M = "rewards_custom_verifiers"  # tests/rewards/rewards_custom_verifiers.py, on sys.path under pytest

VERIFIERS = {
    "kw": {"_target_": f"{M}.keyword_match"},
    "kw_bonus": {"_target_": f"{M}.keyword_match", "bonus": 0.5},
    "fields_call": {"_target_": f"{M}.fields_style", "call": "fields", "scale": 0.5},
    "inproc": {"_target_": f"{M}.keyword_match", "in_process": True},
    "raises": {"_target_": f"{M}.raises"},
    "sleeps": {"_target_": f"{M}.sleeps", "timeout_s": 0.5},
    "stubborn": {"_target_": f"{M}.ignores_alarm", "timeout_s": 0.5},
    "exits": {"_target_": f"{M}.exits_worker"},
    "range": {"_target_": f"{M}.out_of_range"},
    "range_real": {"_target_": f"{M}.out_of_range", "real_valued": True},
    "graded": {"_target_": f"{M}.graded", "real_valued": True},
    "graded_inproc": {"_target_": f"{M}.graded", "real_valued": True, "in_process": True},
    "graded_unit": {"_target_": f"{M}.graded"},
    "nan": {"_target_": f"{M}.not_a_number"},
    "noisy": {"_target_": f"{M}.pid"},
    "math": {"timeout_s": 2.0},
    "code": {"timeout_s": 3.0, "memory_mb": 512},
    "gsm8k": {"verifier": "math", "fallbacks": True},
}


@pytest.fixture(scope="module")
def scorer():
    with build_scorer(VERIFIERS, num_workers=2, timeout_s=5.0) as s:
        yield s


def S(task, **fields):
    return Sample(prompt="q", task=task, fields=fields)


def test_mixed_batch_keeps_order(scorer):
    samples = [
        S("arithmetic", answer=7),
        S("math", answer="1/2"),
        S("code", tests=["assert f() == 1"]),
        S("math", answer="3"),
        S("arithmetic", answer="8"),
        S("code", tests=[{"input": "2\n", "output": "4"}]),
        S("gsm8k", answer="72"),
    ]
    responses = [
        "\\boxed{7}",
        "\\boxed{0.5}",
        "```python\ndef f():\n    return 1\n```",
        "\\boxed{4}",
        "\\boxed{9}",
        "```python\nprint(int(input()) ** 2)\n```",
        "so\n#### 72",
    ]
    res = scorer.score(samples, responses)
    assert isinstance(res, ScoreResult)
    assert res.scores == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert res.failures == [None] * 7
    assert res.reasons[3] == "wrong answer" and res.reasons[4] == "wrong answer"
    assert all(isinstance(x, float) and 0.0 <= x <= 1.0 for x in res.scores)


def test_custom_verifiers_calling_conventions(scorer):
    samples = [S("kw", answer="cat"), S("kw_bonus", answer="dog"), S("fields_call", expected="yes"), S("inproc", answer="z")]
    res = scorer.score(samples, ["a cat", "no", "yes", "z!"])
    assert res.scores == [1.0, 0.5, 0.5, 1.0]
    assert res.failures == [None] * 4


def test_a_real_valued_custom_verifier_may_leave_0_1_in_the_pool_and_in_process(scorer):
    """real_valued: true lets a score leave [0, 1] (still finite); without it the same verifier's negative score is
    a failure scoring 0."""
    tasks = ["graded", "graded_inproc", "range_real", "graded_unit", "graded"]
    responses = ["9", "9", "x", "9", "1\\boxed{}"]
    res = scorer.score([S(t, answer="12") for t in tasks], responses)
    assert res.scores == [-0.5, -0.5, 1.5, 0.0, 0.5]  # the last: 1 of 2 digits in place, boxed
    assert res.failures[:3] == [None] * 3 and res.failures[4] is None
    assert res.failures[3].startswith("ValueError: verifier returned -0.5, expected a float in [0, 1]")


def test_real_valued_tasks_are_the_reward_models_and_the_custom_ones_that_say_so():
    from prm_rl.rewards.scorer import real_valued_tasks

    assert real_valued_tasks(VERIFIERS) == ["range_real", "graded", "graded_inproc"]
    with pytest.raises(VerifierConfigError, match="verifiers.mine.real_valued='yes'"):
        build_scorer({"mine": {"_target_": f"{M}.graded", "real_valued": "yes"}})


def test_failures_score_zero_and_are_reported(scorer):
    tasks = ["raises", "range", "nan", "kw"]
    res = scorer.score([S(t) for t in tasks], ["x"] * 4)
    assert res.scores == [0.0, 0.0, 0.0, 0.0]
    assert res.failures[0] == "ValueError: bad sample"
    assert res.failures[1].startswith("ValueError: verifier returned 1.5")
    assert res.failures[2].startswith("ValueError: verifier returned str")
    assert res.failures[3].startswith("TypeError")  # keyword_match() missing 'answer'
    assert res.failure_counts() == {"ValueError": 3, "TypeError": 1}


def test_bad_fields_for_builtins_are_sample_failures(scorer):
    res = scorer.score([S("math"), S("code", tests=[]), S("arithmetic", answer=1.5)], ["\\boxed{1}"] * 3)
    assert res.scores == [0.0, 0.0, 0.0]
    assert "fields['answer'] is missing" in res.failures[0]
    assert "non-empty list" in res.failures[1]
    assert "must be an int" in res.failures[2]


def test_non_string_response_is_a_sample_failure(scorer):
    res = scorer.score([S("arithmetic", answer=1), S("arithmetic", answer=1)], [None, "\\boxed{1}"])
    assert res.scores == [0.0, 1.0] and res.failures[0].startswith("TypeError")


def test_soft_timeout(scorer):
    t0 = time.monotonic()
    res = scorer.score([S("sleeps"), S("kw", answer="a")], ["x", "a"])
    assert res.scores == [0.0, 1.0]
    assert res.failures == ["timeout", None]
    assert time.monotonic() - t0 < 5


def test_hard_timeout_kills_the_worker_and_the_pool_recovers(scorer):
    t0 = time.monotonic()
    res = scorer.score([S("stubborn"), S("math", answer="2")], ["x", "\\boxed{2}"])
    assert res.failures[0] == "timeout" and res.scores[0] == 0.0
    assert res.scores[1] == 1.0
    assert time.monotonic() - t0 < 15
    res = scorer.score([S("kw", answer="a")] * 3, ["a"] * 3)
    assert res.scores == [1.0] * 3


def test_pathological_math_expression_times_out(scorer):
    t0 = time.monotonic()
    res = scorer.score([S("math", answer="5")], ["\\boxed{9^{9^{9^{9}}}}"])
    assert res.scores == [0.0]
    assert time.monotonic() - t0 < 2.0 + 2.0 + 6  # soft 2 s, hard +2 s, respawn/slack
    # either math-verify gives up (wrong answer) or our limit stops it (timeout); never a stall


def test_dying_worker_is_reported_and_replaced(scorer):
    res = scorer.score([S("exits"), S("kw", answer="b")], ["x", "b"])
    assert res.failures[0] == "worker died (exit code 3)"
    assert res.scores == [0.0, 1.0]


def test_verifier_stdout_does_not_leak(scorer, capfd):
    res = scorer.score([S("noisy")], ["x"])
    assert res.scores == [1.0]
    out, err = capfd.readouterr()
    assert "noise from a verifier" not in out


def test_hostile_code_through_the_pool(scorer):
    samples = [S("code", tests=[{"input": "", "output": "x"}])] * 2
    responses = ["```python\nwhile True:\n    pass\n```", "```python\nprint('x')\n```"]
    res = scorer.score(samples, responses)
    assert res.scores == [0.0, 1.0]
    assert res.failures == [None, None]  # the program failing is a score, not a verifier failure
    assert "timeout" in res.reasons[0]


def test_unknown_task_is_a_config_error(scorer):
    with pytest.raises(ValueError, match="unknown task.*'nope'.*known: arithmetic"):
        scorer.score([S("nope")], ["x"])


def test_length_mismatch_is_a_caller_error(scorer):
    with pytest.raises(ValueError, match="1 samples but 2 responses"):
        scorer.score([S("kw")], ["a", "b"])


def test_empty_batch(scorer):
    assert scorer.score([], []).scores == []


@pytest.mark.parametrize(
    "verifiers, message",
    [
        ({"code": {"bogus": 1}}, "verifiers.code.bogus: unknown option"),
        ({"code": {"timeout_s": -1}}, "verifiers.code.timeout_s=-1"),
        ({"code": {"memory_mb": "lots"}}, "verifiers.code.memory_mb='lots'"),
        ({"code": {"partial": "some"}}, "verifiers.code.partial='some'"),
        ({"code": {"require": ["selinux"]}}, "verifiers.code.require"),
        ({"math": {"fallbacks": "yes"}}, "verifiers.math.fallbacks='yes'"),
        ({"arithmetic": {"timeout_s": 3}}, "verifiers.arithmetic.timeout_s: unknown option"),
        ({"mytask": {}}, "verifiers.mytask: not a built-in task"),
        ({"mytask": {"verifier": "chess"}}, "verifiers.mytask.verifier='chess'"),
        ({"mytask": {"_target_": "no_such_module_xyz.fn"}}, "verifiers.mytask._target_='no_such_module_xyz.fn': cannot import"),
        ({"mytask": {"_target_": f"{M}.missing_fn"}}, "has no attribute 'missing_fn'"),
        ({"mytask": {"_target_": f"{M}.NOT_CALLABLE"}}, "not callable"),
        ({"mytask": {"_target_": f"{M}.raises", "call": "positional"}}, "verifiers.mytask.call"),
        ({"mytask": "math"}, "verifiers.mytask: expected a mapping"),
    ],
)
def test_build_time_config_errors(verifiers, message):
    with pytest.raises(VerifierConfigError, match=message.replace("(", "\\(").replace("[", "\\[")):
        build_scorer(verifiers)


def test_build_scorer_argument_checks():
    with pytest.raises(ValueError, match="num_workers"):
        build_scorer(num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        build_scorer(timeout_s=0)


def test_arithmetic_needs_no_pool_and_close_is_idempotent():
    scorer = build_scorer()
    res = scorer.score([S("arithmetic", answer=3)], ["\\boxed{3}"])
    assert res.scores == [1.0]
    assert scorer._pool is None  # the fast path never started workers
    scorer.close()
    scorer.close()
    assert scorer.tasks == ("arithmetic", "code", "math")
