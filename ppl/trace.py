"""Traces: the immutable state of a particle.

A trace is the ordered tuple of sites one execution of a program visited.
Resampling shares traces between particles instead of copying them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Site:
    """One visited site.

    ``log_prob`` is the target log-density of ``value`` (the factor itself for
    ``factor``/``condition``, the potential for ``twist``). ``log_weight`` is
    what the site added to the importance weight when it was first recorded:
    ``log p - log q`` for random choices, ``log_prob`` for factors and
    observations, the change of potential for twists. ``fingerprint``
    identifies the request of a ``step`` site so replay can detect a program
    that asks for something else at the same site.
    """

    name: str
    kind: str
    value: Any
    log_prob: float = 0.0
    log_weight: float = 0.0
    fingerprint: Any = None


@dataclass(frozen=True)
class Trace:
    """The sites of one (possibly partial) execution, in visit order.

    Example:
        >>> t = Trace().extend(Site("x", "sample", 1))
        >>> t["x"].value, len(t)
        (1, 1)
    """

    sites: tuple[Site, ...] = ()
    # How many leading sites a replay has already checked against the program's
    # requests; replay re-checks only the others (see ReplayMessenger).
    verified: int = field(default=0, repr=False, compare=False)
    _index: dict[str, Site] = field(default=None, init=False, repr=False, compare=False)

    def extend(self, *sites: Site) -> Trace:
        return Trace(self.sites + sites, self.verified)

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self):
        return iter(self.sites)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name()

    def __getitem__(self, name: str) -> Site:
        return self._by_name()[name]

    def _by_name(self) -> dict[str, Site]:
        if self._index is None:
            object.__setattr__(self, "_index", {s.name: s for s in self.sites})
        return self._index

    @property
    def has_answer(self) -> bool:
        return "answer" in self

    @property
    def answer(self) -> Any:
        return self["answer"].value if self.has_answer else None

    @property
    def steps(self) -> list[Site]:
        """The ``step`` sites, in order."""
        return [s for s in self.sites if s.kind == "step"]
