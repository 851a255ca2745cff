from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyro.poutine.messenger import Messenger

from ppl.handlers.sites import site_kind


@dataclass(frozen=True, slots=True)
class PendingChoice:
    """An unrecorded random choice the program stopped at.

    ``fn`` is the target distribution (an ``LMStep`` for ``step`` sites);
    ``proposal`` an optional distribution to draw from instead.
    """

    name: str
    kind: str
    fn: Any
    proposal: Any = None


class Suspend(Exception):
    """Control flow only: carries the pending choice out of the program."""

    def __init__(self, choice: PendingChoice):
        super().__init__(choice.name)
        self.choice = choice


@dataclass(frozen=True, slots=True)
class BatchedCall:
    """A ``ppl.memo`` call the driver computes together with other particles' calls."""

    batch: Any
    args: tuple


class EscapeMessenger(Messenger):
    """Stops the program at the first random choice that has no value yet.

    The driver then draws that choice (batched across particles for LM steps)
    and re-runs the program, which replays up to and including it. With
    ``batch_calls``, it also stops at new ``ppl.memo`` calls that have a
    ``batch`` function (a pending choice of kind ``"call"``), so the driver
    can compute them for many particles at once.
    """

    def __init__(self, batch_calls: bool = False):
        super().__init__()
        self.batch_calls = batch_calls

    def _pyro_sample(self, msg) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        kind = site_kind(msg)
        raise Suspend(PendingChoice(msg["name"], kind, msg["fn"], msg["infer"].get("ppl_proposal")))

    def _pyro_ppl_memo(self, msg) -> None:
        batch = msg["infer"].get("ppl_batch")
        if not self.batch_calls or batch is None or msg["done"] or msg["value"] is not None:
            return
        _, *args = msg["args"]
        raise Suspend(PendingChoice(msg["name"], "call", BatchedCall(batch, tuple(args))))
