from __future__ import annotations

import math

from pyro.poutine.messenger import Messenger

from ppl.errors import InvalidArgumentError
from ppl.handlers.sites import site_kind
from ppl.trace import Site


def _as_float(value, what: str, name: str) -> float:
    result = float(value.sum()) if hasattr(value, "sum") else float(value)
    if math.isnan(result) or result == math.inf:
        raise InvalidArgumentError(
            f"{what} at site {name!r} is {result}; it must be finite or -inf"
        )
    return result


class RecordMessenger(Messenger):
    """Collects the visited sites in order and the weight added by new ones.

    Replayed sites are appended as recorded and add nothing; new deterministic
    sites (factors, observations, memos, twists, the answer) are scored here.
    ``log_weight`` accumulates their contributions and ``log_twist`` tracks the
    current potential, so a twist adds ``log_psi_t - log_psi_{t-1}``.
    """

    def __init__(self):
        super().__init__()
        self.sites: list[Site] = []
        self.log_weight = 0.0
        self.log_twist = 0.0
        self.memo_calls = 0

    def _record(self, msg) -> None:
        kind = site_kind(msg)
        if kind is None:
            return
        site = msg["infer"].get("ppl_site")
        if site is None:
            site = self._new_site(msg, kind)
            self.log_weight += site.log_weight
        self.append(site)

    def append(self, site: Site) -> None:
        """Record a visited site (its weight, if any, was counted when it was new)."""
        if site.kind == "twist":
            self.log_twist = site.value
        self.sites.append(site)

    def _new_site(self, msg, kind: str) -> Site:
        name, value = msg["name"], msg["value"]
        if kind in ("factor", "condition"):
            log_factor = msg["infer"]["ppl_log_factor"]
            return Site(name, kind, log_factor, log_prob=log_factor, log_weight=log_factor)
        if kind == "observe":
            log_prob = _as_float(msg["fn"].log_prob(value), "observation log-density", name)
            return Site(name, kind, value, log_prob=log_prob, log_weight=log_prob)
        if kind == "twist":
            log_psi = _as_float(value, "twist log-potential", name)
            # After a -inf potential the particle is dead; -inf - -inf must not revive it.
            delta = -math.inf if self.log_twist == -math.inf else log_psi - self.log_twist
            return Site(name, kind, log_psi, log_prob=log_psi, log_weight=delta)
        if kind == "memo":
            self.memo_calls += 1
        return Site(name, kind, value)

    _pyro_post_sample = _record
    _pyro_post_ppl_memo = _record
    _pyro_post_ppl_twist = _record
    _pyro_post_ppl_answer = _record
