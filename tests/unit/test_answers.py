"""Answer extraction: last_boxed and final_answer fallbacks."""
import pytest

from prm_rl.answers import final_answer, last_boxed, strip_math_delimiters


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\boxed{5}}", "5"),  # the box that starts last
        ("\\fbox{7}", "7"),
        ("\\boxed {8}", "8"),
        ("$\\boxed 9$", "9"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces are not structure
        ("\\boxed{ 12 }", "12"),
        ("\\boxed{1} and a truncated \\boxed{2", "1"),  # unbalanced last box: previous complete one
        ("\\boxed{(1, {2})}", "(1, {2})"),
        ("no box here", None),
        ("\\boxedx{3}", None),  # not the \boxed macro
        ("\\boxed{", None),
        ("", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_rejects_non_str():
    with pytest.raises(TypeError, match="expects str"):
        last_boxed(None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("blah \\boxed{3} and The answer is 4", "3"),  # a box wins over every fallback
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Thus the final answer is: **7**.", "7"),
        ("**Answer:** 42", "42"),
        ("answer: x = 5", "x = 5"),
        ("We get 3 apples and then 4.5 pears.", "4.5"),
        ("total is -12", "-12"),
        ("it costs 1,234,567 dollars", "1234567"),
        ("ratio 3/4", "3/4"),
        ("nothing numeric", None),
    ],
)
def test_final_answer_fallbacks(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("$5$", "5"), ("\\(x+1\\)", "x+1"), ("\\[2\\]", "2"), ("**9**.", "9"), ("$$\\pi$$", "\\pi"), (" 3. ", "3")],
)
def test_strip_math_delimiters(text, expected):
    assert strip_math_delimiters(text) == expected
