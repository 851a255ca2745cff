from __future__ import annotations

from pyro.poutine.messenger import Messenger

from ppl.errors import DuplicateSiteError, ReplayDivergenceError
from ppl.handlers.sites import site_kind
from ppl.trace import Trace


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

    def _visit(self, msg) -> None:
        kind = site_kind(msg)
        if kind is None:
            return
        if kind == "twist" and msg["name"] is None:
            msg["name"] = f"twist#{self._num_twists}"
            self._num_twists += 1
        name = msg["name"]
        if name in self._seen:
            raise DuplicateSiteError(
                f"site name {name!r} is used twice in one execution; give every "
                "ppl.step/sample/factor/condition/observe/memo call a unique name "
                "(e.g. f'step_{i}' inside loops)"
            )
        self._seen.add(name)
        position, self.position = self.position, self.position + 1
        if position >= len(self.trace.sites):
            return
        recorded = self.trace.sites[position]
        if recorded.name != name or recorded.kind != kind:
            raise ReplayDivergenceError(
                f"replay diverged at site {name!r} ({kind}): the recorded trace has "
                f"{recorded.name!r} ({recorded.kind}) at position {position}. The program must "
                "take the same path for the same random choices; draw randomness only via "
                "ppl.step / ppl.sample"
            )
        if (
            kind == "step"
            and recorded.fingerprint is not None
            and recorded.fingerprint != hash(msg["fn"].request)
        ):
            raise ReplayDivergenceError(
                f"replay diverged at step site {name!r}: the program asked for a different "
                "context or settings than when the step was generated. Build contexts only "
                "from earlier site values and program inputs"
            )
        msg["value"] = recorded.value
        msg["done"] = True
        msg["infer"] = {**msg["infer"], "ppl_site": recorded}

    _pyro_sample = _visit
    _pyro_ppl_memo = _visit
    _pyro_ppl_twist = _visit
    _pyro_ppl_answer = _visit
