from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

from ppl.errors import DuplicateSiteError, ReplayDivergenceError
from ppl.handlers.sites import site_kind
from ppl.trace import Site, Trace


class ReplayMessenger(Messenger):
    """Replays a recorded trace: the k-th site visited takes the k-th recorded value.

    Also names anonymous ``twist`` sites, rejects duplicate site names, and
    raises ``ReplayDivergenceError`` when the program visits a site other than
    the recorded one, or asks for a different LM request at a ``step`` site.

    Every round re-executes each particle from the start, so these checks are
    kept cheap: a replayed site is compared by name and kind (recorded names
    are unique already), and a step's request is compared only on the first
    replay of that site, which is where a program that is not deterministic
    given its random choices first shows it.
    """

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.position = 0
        self._new_names: set[str] = set()
        self._num_twists = 0

    def next_recorded(
        self, name: str | None, kind: str, fingerprint: Callable[[], int] | None = None
    ) -> tuple[str, Site | None]:
        """Advance past the next site; return its name and recorded site (None if new)."""
        if kind == "twist" and name is None:
            name = f"twist#{self._num_twists}"
            self._num_twists += 1
        position = self.position
        self.position = position + 1
        sites = self.trace.sites
        if position < len(sites):
            recorded = sites[position]
            if recorded.name != name or recorded.kind != kind:
                raise ReplayDivergenceError(
                    f"replay diverged at site {name!r} ({kind}): the recorded trace has "
                    f"{recorded.name!r} ({recorded.kind}) at position {position}. The program "
                    "must take the same path for the same random choices; draw randomness only "
                    "via ppl.step / ppl.sample"
                )
            if (
                position >= self.trace.verified
                and recorded.fingerprint is not None
                and fingerprint is not None
                and recorded.fingerprint != fingerprint()
            ):
                raise ReplayDivergenceError(
                    f"replay diverged at step site {name!r}: the program asked for a different "
                    "context or settings than when the step was generated. Build contexts only "
                    "from earlier site values and program inputs"
                )
            return name, recorded
        if name in self._new_names or name in self.trace:
            raise _duplicate(name)
        self._new_names.add(name)
        return name, None

    def _visit(self, msg) -> None:
        kind = site_kind(msg)
        if kind is None:
            return
        fingerprint = (lambda: hash(msg["fn"].request)) if kind == "step" else None
        msg["name"], recorded = self.next_recorded(msg["name"], kind, fingerprint)
        if recorded is not None:
            msg["value"] = recorded.value
            msg["done"] = True
            msg["infer"] = {**msg["infer"], "ppl_site": recorded}

    _pyro_sample = _visit
    _pyro_ppl_memo = _visit
    _pyro_ppl_twist = _visit
    _pyro_ppl_answer = _visit


def _duplicate(name: str) -> DuplicateSiteError:
    return DuplicateSiteError(
        f"site name {name!r} is used twice in one execution; give every "
        "ppl.step/sample/factor/condition/observe/memo call a unique name "
        "(e.g. f'step_{i}' inside loops)"
    )


# (replay, record) pairs of the executions under way, innermost last.
_FAST_REPLAYS: list[tuple[ReplayMessenger, object]] = []


def replay_fast(
    name: str | None, kind: str, fingerprint: Callable[[], int] | None = None
) -> Site | None:
    """The recorded site for this visit without a Pyro message, or None.

    Re-execution replays every recorded site each round; building distributions
    and Pyro messages for them dominated orchestration time. This path applies
    the same checks directly, and is taken only while the runtime's replay
    handler is the innermost one, so user handlers inside a program still see
    every site through the full path.
    """
    if not _FAST_REPLAYS:
        return None
    replay, record = _FAST_REPLAYS[-1]
    if not _PYRO_STACK or _PYRO_STACK[-1] is not replay:
        return None
    position = replay.position
    sites = replay.trace.sites
    if position >= len(sites):
        return None
    recorded = sites[position]
    if (
        recorded.name == name
        and recorded.kind == kind
        and (fingerprint is None or position < replay.trace.verified)
    ):
        replay.position = position + 1  # the common case, checked inline
    else:
        _, recorded = replay.next_recorded(name, kind, fingerprint)
    if kind == "twist":
        record.append(recorded)
    else:
        record.sites.append(recorded)
    return recorded


def record_factor_fast(name: str, kind: str, log_factor: float) -> bool:
    """Record a new factor or condition site directly; False where Pyro must see it.

    Each round adds a few new deterministic sites per particle; building a Pyro
    message and a ``Unit`` distribution for each cost more than the rest of
    the round's bookkeeping.
    """
    if not _FAST_REPLAYS:
        return False
    replay, record = _FAST_REPLAYS[-1]
    if not _PYRO_STACK or _PYRO_STACK[-1] is not replay:
        return False
    name, _ = replay.next_recorded(name, kind)
    record.sites.append(Site(name, kind, log_factor, log_prob=log_factor, log_weight=log_factor))
    record.log_weight += log_factor
    return True
