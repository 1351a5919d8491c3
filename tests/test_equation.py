"""The safe equation evaluator: arithmetic only, and 'no answer' (None) for anything else."""

import pytest

from sbsd_jax.data.equation import equations_equal, evaluate_equation


@pytest.mark.parametrize(
    "text, value",
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("((18 - 10) * 15)", 120.0),
        ("2 + 3 * 4", 14.0),
        ("(2 + 3) * 4", 20.0),
        ("10 - 4 - 3", 3.0),  # left associative
        ("12 / 3 / 2", 2.0),
        ("-5 + 2", -3.0),
        ("-(3 - 5)", 2.0),
        ("+7", 7.0),
        ("--2", 2.0),
        (".5 * 4", 2.0),
        ("  3.  ", 3.0),
    ],
)
def test_arithmetic(text, value):
    assert evaluate_equation(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo hacked')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "2 ** 10",
        "7 // 2",
        "3 % 2",
        "1e308 * 1e308",
        "9" * 400 + " * " + "9" * 400,
        "1 / 0",
        "5 / (3 - 3)",
        "(1 + 2",
        "1 + 2)",
        "1 2",
        "",
        "   ",
        "x + 1",
        "lambda: 0",
        "(" * 500 + "1" + ")" * 500,
        "1 +",
        "The answer is 42",
    ],
)
def test_anything_else_is_no_answer(text):
    assert evaluate_equation(text) is None


def test_non_text_is_no_answer():
    assert evaluate_equation(None) is None  # type: ignore[arg-type]
    assert evaluate_equation(42) is None  # type: ignore[arg-type]


def test_equations_equal_compares_values():
    assert equations_equal("(84 / 2)", "( 84.0 / 2.0 )")
    assert equations_equal("0.1 + 0.2", "0.3")
    assert not equations_equal("(84 / 3)", "( 84.0 / 2.0 )")
    assert not equations_equal("garbage", "( 84.0 / 2.0 )")
    assert not equations_equal("1 / 0", "1 / 0")
