"""How answers are named in tables, plots and ArviZ coordinates."""

from __future__ import annotations

from typing import Any


def answer_label(answer: Any) -> str:
    """A stable text label for an answer: ``repr``, with ``Step`` answers shown as plain text.

    Example:
        >>> answer_label("31"), answer_label(31), answer_label(None)
        ("'31'", '31', 'None')
    """
    if isinstance(answer, str):
        return repr(str(answer))
    return repr(answer)
