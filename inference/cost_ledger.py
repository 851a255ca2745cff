"""Each run's own cost when several runs share a scheduler's running batches.

A run alone is charged the change of its backends' counters between its
start and end (``CostTracker``). Runs that share decode passes cannot be:
every counter would also hold the other runs' work. A ``CostLedger`` charges
every change of a watched backend's counters to the run that caused it:

- work done while the scheduler runs one run's code (starting its choices,
  settling its memo calls, going on after its step ended: scoring, backend
  calls made at submission) is that run's, exactly;
- ``tokens_generated`` of a shared decode pass is counted per step: a step
  that ends charges its run ``len(result.token_ids)``, a cancelled step
  charges what the backend's ``cancel`` reports it had generated (the
  running batch of ``models.TokenLM`` knows; other backends report nothing
  and the step counts 0);
- ``lm_calls`` of a shared pass (a ``BatchedSlots`` call carries several
  runs' steps) are charged to each run with a step in it: a run's
  ``lm_calls`` counts the backend calls that carried its requests;
- ``tokens_prefilled`` and ``tokens_scored`` of a shared pass cannot be told
  apart per step (a feed prefills every new step's uncached context in one
  forward), so the pass's total is split among its runs in proportion to
  their steps that joined the batch since the backend's previous pass (the
  steps a feed prefills), or to their live steps when none joined, with
  largest-remainder rounding: the shares add up to the pass's total.

Work done outside any run's code (none in ``run_problems``) is kept in
``unattributed`` rather than charged to a run.

Example:
    >>> ledger = CostLedger()
    >>> ledger.unattributed.tokens_prefilled
    0
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from ppl.posterior import Cost

_SPLIT = ("tokens_prefilled", "tokens_scored")


class CostLedger:
    """Charges the counters of the backends a scheduler serves to the runs it drives."""

    def __init__(self):
        self.unattributed = Cost()
        self._marks: dict[int, tuple[object, dict[str, int]]] = {}
        self._joined: dict[int, Counter] = {}  # backend key -> runtime -> steps joined

    def watch(self, lm) -> None:
        """Count ``lm``'s work from now on (called before its first submission)."""
        if id(lm) not in self._marks:
            self._marks[id(lm)] = (lm, lm.stats.snapshot())

    def joined(self, key: int, runtime, count: int) -> None:
        """``runtime`` submitted ``count`` steps to the backend ``key``."""
        self._joined.setdefault(key, Counter())[runtime] += count

    @contextlib.contextmanager
    def section(self, runtime) -> Iterator[None]:
        """Charge everything the backends do inside the block to ``runtime``."""
        self.unattributed += self._take()
        try:
            yield
        finally:
            _charge(runtime, self._take())

    def shared_pass(self, key: int, live: Counter, results: list) -> None:
        """Charge the pass just run by backend ``key``.

        ``live`` counts each participating runtime's steps in the pass;
        ``results`` holds ``(runtime, StepResult)`` of the steps that ended.
        """
        delta = self._take()  # its tokens_generated is counted per step below
        joined = Counter({r: n for r, n in self._joined.pop(key, Counter()).items() if r in live})
        weights = joined if joined else live
        shares = {name: _split(getattr(delta, name), weights) for name in _SPLIT}
        for runtime in live:
            _charge(
                runtime,
                Cost(lm_calls=delta.lm_calls, **{n: shares[n].get(runtime, 0) for n in _SPLIT}),
            )
        for runtime, result in results:
            self.generated(runtime, len(result.token_ids))

    def generated(self, runtime, tokens: int) -> None:
        """``runtime``'s step generated ``tokens`` in shared passes."""
        _charge(runtime, Cost(tokens_generated=tokens))

    def _take(self) -> Cost:
        """The change of every watched counter since the last call."""
        total = Cost()
        for key, (lm, before) in list(self._marks.items()):
            after = lm.stats.snapshot()
            self._marks[key] = (lm, after)
            total += Cost(
                tokens_generated=after["tokens_generated"] - before["tokens_generated"],
                tokens_prefilled=after["tokens_prefilled"] - before["tokens_prefilled"],
                tokens_scored=after["tokens_scored"] - before["tokens_scored"],
                lm_calls=sum(after[k] - before[k] for k in ("sample_calls", "score_calls")),
            )
        return total


def _charge(runtime, cost: Cost) -> None:
    runtime.tracker.charged = runtime.tracker.charged + cost


def _split(total: int, weights: Counter) -> dict:
    """``total`` split in proportion to ``weights``, in integers that add up to ``total``.

    Example:
        >>> _split(10, Counter({"a": 1, "b": 2}))
        {'a': 3, 'b': 7}
    """
    whole = sum(weights.values())
    if whole == 0:
        return {key: 0 for key in weights}
    exact = {key: total * w / whole for key, w in weights.items()}
    shares = {key: int(v) for key, v in exact.items()}
    left = total - sum(shares.values())
    for key in sorted(exact, key=lambda k: shares[k] - exact[k])[:left]:
        shares[key] += 1
    return shares
