"""Answers: how they are labelled, read from text, normalized and compared.

``answer_label`` names an answer in tables, plots and ArviZ coordinates.
``extract_answer`` reads the final answer written in a text,
``normalize_answer`` puts it in a canonical form, and ``answers_match``
compares an answer with the expected one(s): numbers compare as exact
rationals, so ``"1,000"``, ``"1000.0"`` and ``"$1000"`` are equal.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?"
ANSWER_NUMBER = re.compile(rf"answer(?:\s+is)?\s*[:=]?\s*\$?\s*({NUMBER})", re.IGNORECASE)
ANSWER_LINE = re.compile(r"answer(?:\s+is)?\s*[:=]\s*(.+)", re.IGNORECASE)
HASHES = re.compile(r"####\s*(.+)")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
ANY_NUMBER = re.compile(NUMBER)
EDGE_PUNCTUATION = " \t\n\"'`.,;:!?()[]{}"


def answer_label(answer: Any) -> str:
    """A stable text label for an answer: ``repr``, with ``Step`` answers shown as plain text.

    Example:
        >>> answer_label("31"), answer_label(31), answer_label(None)
        ("'31'", '31', 'None')
    """
    if isinstance(answer, str):
        return repr(str(answer))
    return repr(answer)


def extract_answer(text: str, *, numeric: bool = True) -> str | None:
    """The final answer written in ``text``.

    In order: the last ``Answer: X`` / ``answer is X``, the last ``#### X``,
    the last ``\\boxed{X}``, then (numeric tasks) the last number or (text
    tasks) the whole text. None when a numeric task's text has no number.

    Example:
        >>> extract_answer("3 * 4 = 12\\n12 + 1 = 13\\nAnswer: 13."), extract_answer("x = 7")
        ('13', '7')
        >>> extract_answer("The answer is: Paris.", numeric=False)
        'Paris.'
    """
    if numeric:
        for pattern in (ANSWER_NUMBER, HASHES, BOXED):
            found = pattern.findall(text)
            if found:
                numbers = ANY_NUMBER.findall(found[-1])
                if numbers:
                    return numbers[0]
        numbers = ANY_NUMBER.findall(text)
        return numbers[-1] if numbers else None
    for pattern in (ANSWER_LINE, HASHES, BOXED):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    return text.strip()


def normalize_answer(text: str, *, numeric: bool = True) -> str:
    """A canonical form for comparing answers.

    Numbers become exact rationals written as ``"n"`` or ``"n/d"`` (commas,
    ``$``, ``%`` and trailing zeros dropped); anything else is lower-cased
    with whitespace collapsed and surrounding quotes and punctuation removed.

    Example:
        >>> normalize_answer("$1,000.50"), normalize_answer("0.5"), normalize_answer("007")
        ('2001/2', '1/2', '7')
        >>> normalize_answer("  The  Eiffel Tower. ", numeric=False)
        'the eiffel tower'
    """
    if numeric:
        number = as_number(text)
        if number is not None:
            return str(number.numerator) if number.denominator == 1 else str(number)
    return " ".join(text.strip(EDGE_PUNCTUATION).lower().split())


def as_number(text) -> Fraction | None:
    """``text`` as an exact rational (commas, ``$``, ``%`` and a final ``.`` dropped), or None.

    Example:
        >>> as_number("$1,000.50"), as_number("seven")
        (Fraction(2001, 2), None)
    """
    cleaned = str(text).strip().strip(".").replace(",", "").replace("$", "").rstrip("%").strip()
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(answer, expected) -> bool:
    """Whether ``answer`` is one of the ``expected`` answers (a value or a list of them).

    Both sides are compared after ``normalize_answer``: numbers as exact
    rationals, text lower-cased without surrounding punctuation. An answer
    of None (a particle that never answered) matches nothing.

    Example:
        >>> answers_match("31.0", "31"), answers_match("30", ["29", "31"]), answers_match(None, "1")
        (True, False, False)
    """
    if answer is None or expected is None:
        return False
    references = expected if isinstance(expected, list | tuple) else [expected]
    normalized = normalize_answer(str(answer))
    return any(normalized == normalize_answer(str(r)) for r in references)
