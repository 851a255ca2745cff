"""Exact JSON encoding of the values that appear in traces.

JSON has no tuples, tensors or steps, so those are written as tagged objects.
Floats are written with ``repr`` (Python's json does), so they round-trip
exactly; ``-inf`` is written as ``-Infinity``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ppl.errors import SerializationError
from ppl.values import Chat, Step


def encode(value: Any, where: str) -> Any:
    """A JSON-ready form of ``value``; ``where`` names the site for error messages."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Step):
        return {
            "__step__": str(value),
            "token_ids": list(value.token_ids),
            "logp": value.logp,
            "finished": value.finished,
            "top_logprobs": [list(row) for row in value.top_logprobs],
        }
    if isinstance(value, str):
        return value
    if isinstance(value, Chat):
        return {"__chat__": [value.user, value.system, value.assistant]}
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, where) for v in value]}
    if isinstance(value, list):
        return [encode(v, where) for v in value]
    if isinstance(value, frozenset):
        return {"__frozenset__": [encode(v, where) for v in value]}
    if isinstance(value, dict):
        return {"__dict__": [[encode(k, where), encode(v, where)] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    raise SerializationError(
        f"cannot save a {type(value).__name__} found at {where}; record JSON-friendly values "
        "(str, numbers, tuples, lists, dicts, tensors) in memo/answer sites"
    )


def decode(data: Any) -> Any:
    """Inverse of ``encode``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__step__" in data:
        return Step(
            data["__step__"],
            token_ids=data["token_ids"],
            logp=data["logp"],
            finished=data["finished"],
            top_logprobs=data.get("top_logprobs", ()),
        )
    if "__chat__" in data:
        return Chat(*data["__chat__"])
    if "__tensor__" in data:
        return torch.tensor(data["__tensor__"], dtype=getattr(torch, data["dtype"]))
    if "__ndarray__" in data:
        return np.array(data["__ndarray__"], dtype=data["dtype"])
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__frozenset__" in data:
        return frozenset(decode(v) for v in data["__frozenset__"])
    if "__dict__" in data:
        return {_hashable(decode(k)): decode(v) for k, v in data["__dict__"]}
    raise SerializationError(f"unknown encoded value {data!r}")


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key
