"""``ProgrammaticVerifier``: a verifier from a Python function (calculator, unit tests, regex)."""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from models.verifiers.base import Verifier

NUMBER = r"-?\d+(?:\.\d+)?"
EQUATION = re.compile(rf"({NUMBER})\s*([-+*/x×])\s*({NUMBER})\s*=\s*({NUMBER})")


def equations(text: str) -> list[tuple[str, str, str, str]]:
    """The ``a op b = c`` equations written in ``text``.

    Example:
        >>> equations("3 * 12 = 36 apples, then 36 - 5 = 31")
        [('3', '*', '12', '36'), ('36', '-', '5', '31')]
    """
    return EQUATION.findall(text)


def calculator_check(a: str, op: str, b: str, c: str) -> bool:
    """Whether ``a op b == c`` holds exactly (rational arithmetic; ``x``/``×`` multiply).

    Example:
        >>> calculator_check("36", "-", "5", "31"), calculator_check("7", "/", "0", "1")
        (True, False)
    """
    x, y, z = Fraction(a), Fraction(b), Fraction(c)
    if op == "+":
        return x + y == z
    if op == "-":
        return x - y == z
    if op in ("*", "x", "×"):
        return x * y == z
    return y != 0 and x / y == z


class ProgrammaticVerifier(Verifier):
    """A verifier computed by ``fn(question, steps) -> bool | float in [0, 1]``.

    Outcome level: ``fn`` sees the whole solution once. Step level: ``fn`` is
    called with each prefix ``steps[:k + 1]`` and judges its last step.

    Example:
        >>> def passes_tests(question, steps):
        ...     scope = {}
        ...     try:
        ...         exec("".join(steps), scope)
        ...         return scope["add"](2, 3) == 5
        ...     except Exception:
        ...         return False
        >>> ProgrammaticVerifier(passes_tests).score("Write add(a, b).", ["def add(a, b):\\n",
        ...                                                                "    return a + b\\n"])
        1.0
    """

    def __init__(
        self,
        fn: Callable[[str, tuple[str, ...]], bool | float],
        *,
        level: str = "outcome",
        aggregate: str = "min",
    ):
        super().__init__(level=level, aggregate=aggregate)
        self.fn = fn

    def _probabilities(self, items, *, last_only):
        results = []
        for question, steps in items:
            if self.level == "outcome":
                results.append([self.fn(question, steps)])
                continue
            ends = [len(steps)] if last_only and steps else range(1, len(steps) + 1)
            results.append([self.fn(question, steps[:end]) for end in ends])
        return results

    @classmethod
    def calculator(cls, *, aggregate: str = "min") -> ProgrammaticVerifier:
        """Step level: 1 when every ``a op b = c`` in the step holds exactly, else 0.

        Example:
            >>> calculator = ProgrammaticVerifier.calculator()
            >>> calculator.step_scores([("", ["2 + 2 = 4\\n", "4 * 3 = 11"])])
            [[1.0, 0.0]]
        """

        def check_last_step(question: str, steps: tuple[str, ...]) -> bool:
            return all(calculator_check(*equation) for equation in equations(steps[-1]))

        return cls(check_last_step, level="step", aggregate=aggregate)

    @classmethod
    def regex(cls, pattern: str, *, flags: int = 0) -> ProgrammaticVerifier:
        """Outcome level: 1 when ``pattern`` matches somewhere in the concatenated steps.

        Example:
            >>> ProgrammaticVerifier.regex(r"Answer: \\d+$").score("", ["x\\n", "Answer: 12"])
            1.0
        """
        compiled = re.compile(pattern, flags)

        def matches(question: str, steps: tuple[str, ...]) -> bool:
            return compiled.search("".join(steps)) is not None

        return cls(matches, level="outcome")
