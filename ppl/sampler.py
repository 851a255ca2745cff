"""The sampler as a distribution: temperature, top-k and top-p define a step's target.

Practitioners sample a language model through a sampler, and that sampler is
the prior they mean: per token, the softmax of ``logits / temperature``
restricted to the ``top_k`` most likely tokens and then to the ``top_p``
nucleus, renormalised. The order is temperature, top-k, top-p, as in Hugging
Face ``generate`` and vLLM. Ties at a cut are kept (every token whose logit
equals the k-th largest stays), so the truncated support depends only on the
logits, never on how a sort breaks ties.

Every backend computes target log-probabilities with ``target_log_probs`` and
proposal log-probabilities with ``proposal_log_probs``, so sampling, scoring
and training agree to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ppl.errors import InvalidArgumentError


@dataclass(frozen=True, slots=True)
class Sampler:
    """Temperature, top-k and top-p: the per-token distribution a step targets.

    ``top_k=None`` and ``top_p=None`` switch truncation off.

    Example:
        >>> Sampler(0.7, top_k=50).is_model
        False
        >>> Sampler().is_model
        True
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        check_sampler(self.temperature, self.top_k, self.top_p)

    @property
    def is_model(self) -> bool:
        """Whether this is the model itself (temperature 1, no truncation)."""
        return self.temperature == 1.0 and self.top_k is None and self.top_p is None


def check_sampler(temperature, top_k, top_p) -> None:
    """Raise ``InvalidArgumentError`` for settings that define no distribution.

    Example:
        >>> check_sampler(1.0, 0, None)
        Traceback (most recent call last):
        ...
        ppl.errors.InvalidArgumentError: top_k must be a positive int or None, got 0
    """
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise InvalidArgumentError(f"temperature must be a number > 0, got {temperature!r}")
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidArgumentError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1
    ):
        raise InvalidArgumentError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def target_log_probs(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    """Log-probabilities of each row's sampler applied to ``logits`` (``[rows, vocab]``).

    Tokens outside a row's truncated support get ``-inf``.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
        >>> target_log_probs(logits, [Sampler(top_k=2)]).exp().round(decimals=3)
        tensor([[0.7310, 0.2690, 0.0000, 0.0000]])
    """
    logits = logits.float()
    if all(s.is_model for s in samplers):
        return torch.log_softmax(logits, dim=-1)
    temperatures = torch.tensor(
        [[s.temperature] for s in samplers], dtype=logits.dtype, device=logits.device
    )
    scaled = logits / temperatures
    if any(s.top_k is not None for s in samplers):
        scaled = _keep_top_k(scaled, [s.top_k for s in samplers])
    if any(s.top_p is not None for s in samplers):
        scaled = _keep_nucleus(scaled, [s.top_p for s in samplers])
    return torch.log_softmax(scaled, dim=-1)


def proposal_log_probs(
    shaped_logits: torch.Tensor, temperatures: Sequence[float], target_log_p: torch.Tensor
) -> torch.Tensor:
    """A proposal: ``softmax(shaped_logits / T)`` restricted to the target's support.

    Restricting to the support costs nothing in exactness (a token the target
    excludes would get weight zero) and saves the draws that would be wasted.
    A row with no allowed token left is NaN; callers report it.

    Example:
        >>> logits = torch.tensor([[2.0, 1.0, 0.0]])
        >>> log_p = target_log_probs(logits, [Sampler(top_k=2)])
        >>> proposal_log_probs(logits, [2.0], log_p).exp().round(decimals=3)
        tensor([[0.6220, 0.3780, 0.0000]])
    """
    scale = torch.tensor(
        [[t] for t in temperatures], dtype=torch.float32, device=shaped_logits.device
    )
    allowed = target_log_p > -torch.inf
    proposal = torch.where(allowed, shaped_logits.float() / scale, -torch.inf)
    return torch.log_softmax(proposal, dim=-1)


def _keep_top_k(scaled: torch.Tensor, top_k: list[int | None]) -> torch.Tensor:
    vocab = scaled.shape[-1]
    ks = [min(k, vocab) if k is not None else vocab for k in top_k]
    largest = torch.topk(scaled, max(ks), dim=-1).values
    index = torch.tensor([[k - 1] for k in ks], device=scaled.device)
    kth = largest.gather(1, index)
    off = torch.tensor([[k is None] for k in top_k], device=scaled.device)
    return torch.where(off | (scaled >= kth), scaled, -torch.inf)


def _keep_nucleus(scaled: torch.Tensor, top_p: list[float | None]) -> torch.Tensor:
    """Keep the most likely tokens until their mass reaches ``top_p`` (ties at the cut kept)."""
    probs = torch.softmax(scaled, dim=-1)
    sorted_probs = torch.sort(probs, dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    p = torch.tensor([[1.0 if v is None else v] for v in top_p], device=scaled.device)
    # The smallest kept probability: the last sorted token whose preceding mass is below p.
    kept = (mass_before < p).sum(dim=-1, keepdim=True).clamp(min=1)
    cut = sorted_probs.gather(1, kept - 1)
    off = torch.tensor([[v is None or v >= 1.0] for v in top_p], device=scaled.device)
    return torch.where(off | (probs >= cut), scaled, -torch.inf)
