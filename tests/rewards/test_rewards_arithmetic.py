"""The built-in arithmetic verifier (in-process hot path)."""
import time

import pytest

from prm_rl.rewards.arithmetic import verify_arithmetic


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("14+9=23\n23*9=207\n207-10=197\n\\boxed{197}", 197, 1.0),
        ("\\boxed{197}", "197", 1.0),  # answer as a string
        ("\\boxed{ 197 }", 197, 1.0),
        ("\\boxed{0197}", 197, 1.0),  # integer equality
        ("\\boxed{+5}", 5, 1.0),
        ("\\boxed{-5}", -5, 1.0),
        ("\\boxed{-5}", 5, 0.0),
        ("\\boxed{196}", 197, 0.0),
        ("\\boxed{197.0}", 197, 0.0),  # exact integers only
        ("\\boxed{1,97}", 197, 0.0),
        ("\\boxed{x=197}", 197, 0.0),
        ("197", 197, 0.0),  # no box, no fallback
        ("\\boxed{196} ... \\boxed{197}", 197, 1.0),  # last box
        ("\\boxed{197} ... \\boxed{196}", 197, 0.0),
        ("\\boxed{" + "9" * 5000 + "}", 197, 0.0),  # absurdly long: wrong, not an error
        ("", 0, 0.0),
    ],
)
def test_arithmetic_cases(response, answer, expected):
    assert float(verify_arithmetic("3+4=?\n", response, {"answer": answer})) == expected


def test_arithmetic_reasons():
    assert verify_arithmetic("", "no box", {"answer": 1}).reason == "no \\boxed{} answer"
    assert verify_arithmetic("", "\\boxed{1.5}", {"answer": 1}).reason == "boxed answer is not an integer"
    assert verify_arithmetic("", "\\boxed{2}", {"answer": 1}).reason == "wrong answer"


@pytest.mark.parametrize(
    "fields, message",
    [({}, "missing"), ({"answer": 1.5}, "must be an int"), ({"answer": True}, "must be an int"), ({"answer": "abc"}, "not an integer")],
)
def test_arithmetic_bad_fields_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        verify_arithmetic("", "\\boxed{1}", fields)


def test_arithmetic_is_fast():
    response = "14+9=23\n23*9=207\n207-10=197\n\\boxed{197}"
    t0 = time.perf_counter()
    for _ in range(20000):
        verify_arithmetic("", response, {"answer": 197})
    assert time.perf_counter() - t0 < 2.0  # ~5 us each; generous for a shared 2-core machine
