"""Files holding trained proposals and twist heads: tensors with a format tag."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ppl.errors import SerializationError


def save_checkpoint(path: str | Path, format_tag: str, data: dict[str, Any]) -> None:
    """Write ``data`` (tensors and plain values) to ``path`` under ``format_tag``.

    Example:
        >>> save_checkpoint("bias.pt", "pplscale-logit-bias/1", {"bias": torch.zeros(3)})
    """
    torch.save({"format": format_tag, **data}, Path(path))


def load_checkpoint(path: str | Path, format_tag: str, what: str) -> dict[str, Any]:
    """Read what ``save_checkpoint`` wrote; a clear error names ``what`` was expected.

    Only tensors and plain values are loaded (``weights_only``), never code.

    Example:
        >>> tag = "pplscale-logit-bias/1"
        >>> save_checkpoint("bias.pt", tag, {"bias": torch.zeros(3)})
        >>> load_checkpoint("bias.pt", tag, "a logit-bias proposal")
        {'format': 'pplscale-logit-bias/1', 'bias': tensor([0., 0., 0.])}
        >>> load_checkpoint("bias.pt", "pplscale-twist-head/1", "a twist head")
        Traceback (most recent call last):
        ...
        ppl.errors.SerializationError: bias.pt is not a twist head saved by pplscale (see save())
    """
    path = Path(path)
    try:
        data = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise SerializationError(f"cannot read {what} from {path}: {error}") from error
    if not isinstance(data, dict) or data.get("format") != format_tag:
        raise SerializationError(f"{path} is not {what} saved by pplscale (see save())")
    return data
