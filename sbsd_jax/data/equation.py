"""Safe arithmetic for SVAMP-style equation labels such as '( 84.0 / 2.0 )'.

The reference scores equations with Python's `eval`, which would run whatever a model
generates. This evaluator understands numbers, + - * /, parentheses and unary minus/plus and
nothing else: its own tokenizer and recursive-descent parser, no eval, no ast execution.
Anything else (names, calls, '**', '//', division by zero, overflow) gives None: "no answer".
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(.))")
_MAX_LENGTH = 2000  # model outputs are short; refuse anything absurd before tokenizing.
_MAX_DEPTH = 200  # parenthesis/unary nesting; keeps recursion bounded.


class _Garbage(Exception):
    """Internal: the text is not an arithmetic expression we accept."""


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    stripped_end = len(text.rstrip())
    while position < stripped_end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise _Garbage
        number, symbol = match.groups()
        if number is not None:
            tokens.append(number)
        elif symbol in "+-*/()":
            tokens.append(symbol)
        else:
            raise _Garbage
        position = match.end()
    return tokens


class _Parser:
    """expression := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := ('+'|'-') factor | number | '(' expression ')'."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Garbage
        self.position += 1
        return token

    def expression(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value = value * self.factor()
            else:
                divisor = self.factor()
                if divisor == 0:
                    raise _Garbage
                value = value / divisor
        return value

    def factor(self) -> float:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _Garbage
        try:
            token = self.take()
            if token == "-":
                return -self.factor()
            if token == "+":
                return self.factor()
            if token == "(":
                value = self.expression()
                if self.take() != ")":
                    raise _Garbage
                return value
            if token[0].isdigit() or token[0] == ".":
                return float(token)
            raise _Garbage
        finally:
            self.depth -= 1


def evaluate_equation(text: str) -> float | None:
    """The value of an arithmetic expression, or None when it is not one we accept."""
    if not isinstance(text, str) or len(text) > _MAX_LENGTH:
        return None
    try:
        tokens = _tokenize(text)
        if not tokens:
            return None
        parser = _Parser(tokens)
        value = parser.expression()
        if parser.position != len(tokens):
            return None
    except (_Garbage, OverflowError):
        return None
    return value if math.isfinite(value) else None


def equations_equal(predicted: str, reference: str) -> bool:
    """Whether two equations have the same value (the reference's SVAMP accuracy).

    The reference compares `eval` results with ==; a relative tolerance of 1e-9 additionally
    accepts different but equal expressions that round differently ('0.1 + 0.2' vs '0.3').
    Unevaluable text never matches.
    """
    left = evaluate_equation(predicted)
    right = evaluate_equation(reference)
    if left is None or right is None:
        return False
    return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12)
