"""How a Pyro message maps to a pplscale site kind."""

from __future__ import annotations

from ppl.distributions import LMStep

_EFFECT_KINDS = {"ppl_memo": "memo", "ppl_twist": "twist", "ppl_answer": "answer"}


def site_kind(msg) -> str | None:
    """The site kind of a message, or None for messages pplscale does not track."""
    if msg["type"] == "sample":
        if isinstance(msg["fn"], LMStep):
            return "step"
        kind = msg["infer"].get("ppl_kind")
        if kind is not None:
            return kind
        return "observe" if msg["is_observed"] else "sample"
    return _EFFECT_KINDS.get(msg["type"])
