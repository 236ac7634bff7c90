"""The math verifier: math-verify equivalence plus the documented extras (called directly, in-process)."""
import pytest

from prm_rl.rewards.math_verifier import answers_match, verify_math


def box(s):
    return f"Some reasoning.\n\\boxed{{{s}}}"


# (gold, prediction text inside \boxed{}, equal?)
EQUIV = [
    # fractions vs decimals, \frac vs a/b, \dfrac / \tfrac
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "1/2", True),
    ("0.5", "\\frac12", True),
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("0.75", "\\tfrac{3}{4}", True),
    ("2/4", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "0.333333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("0.5", "0.05", False),
    ("\\frac{3}{2}", "1\\frac{1}{2}", True),
    # percentages (either side), and what is not a percentage
    ("50\\%", "50\\%", True),
    ("50\\%", "50", True),
    ("50\\%", "0.5", True),
    ("0.5", "50\\%", True),
    ("50", "50\\%", True),
    ("0.5", "50", False),
    ("25\\%", "0.3", False),
    # integers, negatives, thousands separators, scientific notation
    ("-3", "-3", True),
    ("-3", "3", False),
    ("3", "-3", False),
    ("1000", "1,000", True),
    ("1000", "10^{3}", True),
    ("12", "12.0", True),
    ("12", "12.5", False),
    ("-\\frac{1}{2}", "-0.5", True),
    ("-\\frac{1}{2}", "\\frac{1}{2}", False),
    # roots and symbolic forms
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("\\pi", "3.14", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("a+b", "b+a", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    # tuples, intervals, sets, \left( \right)
    ("(1, 2)", "(1,2)", True),
    ("(3, -1)", "\\left(3,-1\\right)", True),
    ("(3,-1)", "(-1,3)", False),
    ("[1, 2)", "[1,2)", True),
    ("[1, 2)", "(1,2)", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty, 3]", "(-\\infty,3)", False),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("\\{1, 2\\}", "\\{1, 3\\}", False),
    ("(1,2,3)", "(1, 2, 3)", True),
    ("(1,2,3)", "(1, 2)", False),
    # equations, units, text answers
    ("5", "x = 5", True),
    ("x=5", "5", True),
    ("5", "x = 6", False),
    ("5", "5 \\text{ cm}", True),
    ("5", "5\\,\\mathrm{cm}", True),
    ("6", "5 \\text{ cm}", False),
    ("\\text{(A)}", "A", True),
    ("\\infty", "\\infty", True),
    ("\\infty", "-\\infty", False),
]


@pytest.mark.parametrize("gold, pred, equal", EQUIV)
def test_math_equivalence(gold, pred, equal):
    got = verify_math("", box(pred), {"answer": gold})
    assert float(got) == (1.0 if equal else 0.0), (gold, pred, got)


@pytest.mark.parametrize(
    "gold, pred",
    [(g, p) for g, p, eq in EQUIV if eq and "%" not in g + p and "x" not in g + p and "text" not in g + p][:12],
)
def test_math_equivalence_is_symmetric_for_plain_values(gold, pred):
    assert answers_match(pred, gold)


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("I think \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", 1.0),  # nested braces in the box
        ("first \\boxed{3}, corrected: \\boxed{4}", "4", 1.0),  # the last box counts
        ("first \\boxed{3}, corrected: \\boxed{4}", "3", 0.0),
        ("The answer is $\\frac{2}{3}$.", "2/3", 1.0),  # fallback: "answer is"
        ("blah\n#### 72", "72", 1.0),  # fallback: GSM8K marker
        ("so we get 17 in total", "17", 1.0),  # fallback: last number
        ("so we get 17 in total, not 18", "17", 0.0),
        ("no answer at all", "17", 0.0),
        ("\\boxed{}", "17", 0.0),
        ("$\\boxed{0.5}$", "$\\frac{1}{2}$", 1.0),  # gold with delimiters
        ("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}", 1.0),  # gold in a box
        ("\\boxed{7}", 7, 1.0),  # gold as a number
        ("\\boxed{2.5}", 2.5, 1.0),
        ("\\boxed{6}", ["5", "6"], 1.0),  # a list of accepted answers
        ("\\boxed{Monday}", "\\text{Monday}", 1.0),
    ],
)
def test_math_extraction_and_gold_forms(response, answer, expected):
    assert float(verify_math("", response, {"answer": answer})) == expected


def test_math_fallbacks_can_be_switched_off():
    v = verify_math("", "The answer is 4", {"answer": "4"}, fallbacks=False)
    assert float(v) == 0.0 and v.reason == "no \\boxed{} answer"
    assert float(verify_math("", "\\boxed{4}", {"answer": "4"}, fallbacks=False)) == 1.0


def test_math_reasons():
    assert verify_math("", "\\boxed{3}", {"answer": "4"}).reason == "wrong answer"
    assert verify_math("", "words only", {"answer": "4"}).reason == "no final answer found"
    assert "longer than" in verify_math("", "\\boxed{" + "1+" * 600 + "1}", {"answer": "4"}).reason


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "fields\\['answer'\\] is missing"),
        ({"answer": None}, "must be a str or number"),
        ({"answer": True}, "must be a str or number"),
        ({"answer": []}, "empty list"),
        ({"answer": "  "}, "is empty"),
    ],
)
def test_math_bad_fields_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        verify_math("", "\\boxed{1}", fields)
