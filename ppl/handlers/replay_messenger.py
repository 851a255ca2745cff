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
    """

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace
        self.position = 0
        self._seen: set[str] = set()
        self._num_twists = 0

    def next_recorded(
        self, name: str | None, kind: str, fingerprint: Callable[[], int] | None = None
    ) -> tuple[str, Site | None]:
        """Advance past the next site; return its name and recorded site (None if new)."""
        if kind == "twist" and name is None:
            name = f"twist#{self._num_twists}"
            self._num_twists += 1
        if name in self._seen:
            raise DuplicateSiteError(
                f"site name {name!r} is used twice in one execution; give every "
                "ppl.step/sample/factor/condition/observe/memo call a unique name "
                "(e.g. f'step_{i}' inside loops)"
            )
        self._seen.add(name)
        position, self.position = self.position, self.position + 1
        if position >= len(self.trace.sites):
            return name, None
        recorded = self.trace.sites[position]
        if recorded.name != name or recorded.kind != kind:
            raise ReplayDivergenceError(
                f"replay diverged at site {name!r} ({kind}): the recorded trace has "
                f"{recorded.name!r} ({recorded.kind}) at position {position}. The program must "
                "take the same path for the same random choices; draw randomness only via "
                "ppl.step / ppl.sample"
            )
        if recorded.fingerprint is not None and fingerprint is not None:
            if recorded.fingerprint != fingerprint():
                raise ReplayDivergenceError(
                    f"replay diverged at step site {name!r}: the program asked for a different "
                    "context or settings than when the step was generated. Build contexts only "
                    "from earlier site values and program inputs"
                )
        return name, recorded

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
    if replay.position >= len(replay.trace.sites):
        return None
    _, recorded = replay.next_recorded(name, kind, fingerprint)
    record.append(recorded)
    return recorded
