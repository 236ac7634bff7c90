"""Custom verifiers used by the tests through ``_target_`` (imported by the pool workers)."""
import os
import time


def keyword_match(prompt, response, answer, bonus=0.0, **_):
    """Default calling convention: fn(prompt=..., response=..., **fields, **extra options)."""
    return min(1.0, (1.0 if answer in response else 0.0) + bonus)


def fields_style(prompt, response, fields, scale=1.0):
    """call: fields convention: fn(prompt, response, fields, **extra options)."""
    return scale * float(response.strip() == fields["expected"])


def raises(prompt, response, **fields):
    raise ValueError("bad sample")


def sleeps(prompt, response, seconds=30.0, **fields):
    time.sleep(seconds)
    return 1.0


def ignores_alarm(prompt, response, **fields):
    """Swallows the soft-timeout exception and keeps running: only the hard kill stops it."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except BaseException:  # noqa: B902 - deliberately hostile
            pass
    return 1.0


def exits_worker(prompt, response, **fields):
    os._exit(3)


def out_of_range(prompt, response, **fields):
    return 1.5


def graded(prompt, response, answer, **_):
    """Partial credit on the answer's digits, minus 0.5 without a boxed answer: a score outside [0, 1]."""
    right = sum(a == b for a, b in zip(response, answer)) / len(answer)
    return right - (0.0 if "\\boxed" in response else 0.5)


def not_a_number(prompt, response, **fields):
    return "yes"


def pid(prompt, response, **fields):
    """Returns 1.0; prints to stdout, which must not reach the caller's stdout."""
    print("noise from a verifier")
    return 1.0


NOT_CALLABLE = 3
