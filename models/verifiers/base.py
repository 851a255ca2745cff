"""The verifier contract: batched probabilities that steps are correct, and how they weigh.

A verifier maps ``(question, steps)`` to the probability that the solution is
correct. *Step-level* verifiers judge each step given the ones before it and
combine the per-step probabilities with an aggregation (``last``, ``min``,
``prod``, ``mean``); *outcome-level* verifiers judge the whole solution once.
A program turns a probability into a weight explicitly with
``to_log_weight`` (see there for what each conversion means), usually through
``Verifier.factor`` or ``Verifier.twist``, which call the verifier through
``ppl.memo`` so that re-execution replays the score instead of recomputing it
and each call is counted in ``Posterior.cost.verifier_calls``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

from ppl.errors import InvalidArgumentError, VerifierError
from ppl.primitives import factor, memo, twist
from ppl.trace import Trace

LEVELS = ("step", "outcome")
AGGREGATIONS = ("last", "min", "prod", "mean")
TRANSFORMS = ("log", "logit")
# ``logit`` clips probabilities to [EPS, 1 - EPS] so a hard 0/1 verdict stays finite.
LOGIT_EPS = 1e-6

Steps = str | Sequence[str]
Item = tuple[str, Steps]


def as_steps(steps: Steps) -> tuple[str, ...]:
    """Steps as a tuple of plain strings; a single ``str`` is a one-step solution.

    Example:
        >>> as_steps("x = 1"), as_steps(["a\\n", "b"])
        (('x = 1',), ('a\\n', 'b'))
    """
    if isinstance(steps, str):
        return (str(steps),)
    return tuple(str(s) for s in steps)


def aggregate_scores(scores: Sequence[float], how: str) -> float:
    """Combine per-step probabilities into one: ``last``, ``min``, ``prod`` or ``mean``.

    A solution with no judged steps has nothing to reject and scores 1.

    Example:
        >>> [aggregate_scores([0.9, 0.5, 0.8], how) for how in AGGREGATIONS]
        [0.8, 0.5, 0.36000000000000004, 0.7333333333333334]
    """
    if how not in AGGREGATIONS:
        raise InvalidArgumentError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    if not scores:
        return 1.0
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "prod":
        return float(math.prod(scores))
    return float(sum(scores) / len(scores))


def to_log_weight(p: float, transform: str = "log", temperature: float = 1.0) -> float:
    """Convert a verifier probability ``p`` into a program log-weight.

    With ``ppl.factor(name, to_log_weight(p, ...))`` the program's target
    becomes ``p_LM(trace) * w(p)``:

    - ``log``: ``w = p``. The posterior given that the verifier accepts, reading
      ``p`` as P(accept | trace). ``p = 0`` rejects the trace (``-inf``).
    - ``logit``: ``w = p / (1 - p)``. Reading ``p`` as a calibrated posterior
      under a 50/50 prior, the odds are the verifier's likelihood ratio of
      correct to incorrect; confident scores count more than under ``log``.
      ``p`` is clipped to ``[1e-6, 1 - 1e-6]``, so 0/1 verdicts give +-13.8.
    - ``temperature`` ``tau`` divides either: ``w = p ** (1 / tau)`` for
      ``log``. ``tau < 1`` concentrates on high scores (``tau -> 0`` keeps only
      the best, as best-of-N does); ``tau > 1`` flattens (``tau -> inf`` ignores
      the verifier).

    Example:
        >>> to_log_weight(0.5), to_log_weight(0.5, "logit"), to_log_weight(0.25, temperature=0.5)
        (-0.6931471805599453, 0.0, -2.772588722239781)
    """
    if transform not in TRANSFORMS:
        raise InvalidArgumentError(f"unknown transform {transform!r}; choose one of {TRANSFORMS}")
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature must be > 0, got {temperature!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise InvalidArgumentError(f"a verifier probability must be in [0, 1], got {p!r}")
    if transform == "log":
        value = math.log(p) if p > 0 else -math.inf
    else:
        q = min(max(p, LOGIT_EPS), 1.0 - LOGIT_EPS)
        value = math.log(q) - math.log1p(-q)
    return value / temperature


class Verifier(abc.ABC):
    """Base class of verifiers and reward models: batched ``(question, steps) -> p``.

    Subclasses implement ``_probabilities``. Users call ``score`` /
    ``score_batch`` directly, or ``factor`` / ``twist`` inside a reasoning
    program. ``calls`` counts the solutions scored.

    Example:
        >>> from models.verifiers import ProgrammaticVerifier
        >>> v = ProgrammaticVerifier.calculator()
        >>> v.score("What is 2 + 3?", ["2 + 3 = 5\\n", "Answer: 5"]), v.calls
        (1.0, 1)
    """

    def __init__(self, *, level: str, aggregate: str):
        if level not in LEVELS:
            raise InvalidArgumentError(f"unknown verifier level {level!r}; choose one of {LEVELS}")
        if aggregate not in AGGREGATIONS:
            raise InvalidArgumentError(
                f"unknown aggregation {aggregate!r}; choose one of {AGGREGATIONS}"
            )
        self.level = level
        self.aggregate = aggregate
        self.calls = 0

    @abc.abstractmethod
    def _probabilities(
        self, items: list[tuple[str, tuple[str, ...]]], *, last_only: bool
    ) -> list[list[float]]:
        """Probabilities for each item, in one batch.

        Step level: one per step, the k-th judging ``steps[k]`` after
        ``steps[:k]``; with ``last_only`` just the last step's (an empty list
        for no steps). Outcome level: one for the whole solution.
        """

    def step_scores(self, items: Sequence[Item]) -> list[list[float]]:
        """Per-step probabilities (one for outcome-level verifiers) of each item, batched.

        Example:
            >>> from models.verifiers import ProgrammaticVerifier
            >>> v = ProgrammaticVerifier.calculator()
            >>> v.step_scores([("q", ["1 + 1 = 2\\n", "2 + 2 = 5"])])
            [[1.0, 0.0]]
        """
        normalized = [(str(question), as_steps(steps)) for question, steps in items]
        last_only = self.level == "step" and self.aggregate == "last"
        results = self._probabilities(normalized, last_only=last_only)
        if len(results) != len(normalized):
            raise VerifierError(
                f"{type(self).__name__} returned {len(results)} results for "
                f"{len(normalized)} solutions"
            )
        checked = []
        for i, ((_, steps), scores) in enumerate(zip(normalized, results, strict=True)):
            if self.level == "outcome":
                expected = 1
            else:
                expected = min(len(steps), 1) if last_only else len(steps)
            if len(scores) != expected:
                raise VerifierError(
                    f"{type(self).__name__} returned {len(scores)} scores for solution {i} "
                    f"with {len(steps)} steps; expected {expected}"
                )
            checked.append([self._check(p, i, k) for k, p in enumerate(scores)])
        self.calls += len(normalized)
        return checked

    def score_batch(self, items: Sequence[Item]) -> list[float]:
        """The aggregated probability that each solution is correct, batched.

        Example:
            >>> from models.verifiers import ProgrammaticVerifier
            >>> v = ProgrammaticVerifier.calculator()
            >>> v.score_batch([("q", ["1 + 1 = 2"]), ("q", ["1 + 1 = 3"])])
            [1.0, 0.0]
        """
        return [aggregate_scores(scores, self.aggregate) for scores in self.step_scores(items)]

    def score(self, question: str, steps: Steps) -> float:
        """The probability that ``steps`` correctly answer ``question``."""
        return self.score_batch([(question, steps)])[0]

    def memo(self, name: str, question: str, steps: Steps) -> float:
        """``score`` through ``ppl.memo``: recorded once per trace, replayed afterwards.

        Importance sampling and SMC score all the particles that reach the site
        in a round with one ``score_batch`` call.
        """
        return memo(name, self.score, str(question), as_steps(steps), batch=self.score_batch)

    def factor(
        self,
        name: str,
        question: str,
        steps: Steps,
        *,
        transform: str = "log",
        temperature: float = 1.0,
    ) -> float:
        """Score the solution (memo site ``name + ".score"``) and weight by it (factor ``name``).

        Returns the probability.

        Example:
            >>> from models.verifiers import ProgrammaticVerifier
            >>> calculator = ProgrammaticVerifier.calculator()
            >>> @ppl.program
            ... def guess():
            ...     c = int(ppl.sample("c", dist.Categorical(torch.ones(8) / 8)))
            ...     calculator.factor("check", "2 + 3?", [f"2 + 3 = {c}"])
            ...     ppl.answer(c)
            >>> ppl.importance(guess, num_particles=32, seed=0).answer_distribution()
            {5: 1.0}
        """
        p = self.memo(f"{name}.score", question, steps)
        factor(name, to_log_weight(p, transform, temperature))
        return p

    def twist(
        self,
        name: str,
        question: str,
        steps: Steps,
        *,
        transform: str = "log",
        temperature: float = 1.0,
    ) -> float:
        """Score a partial solution (memo site ``name``) and make it the current ``ppl.twist``.

        The potential guides SMC resampling and beam search; it is removed
        when the program returns, so it does not change the target.

        Example:
            >>> from models.verifiers import ProgrammaticVerifier
            >>> calculator = ProgrammaticVerifier.calculator()
            >>> @ppl.program
            ... def count(prompt):
            ...     lines = []
            ...     for i in range(2):
            ...         d = int(ppl.sample(f"d{i}", dist.Categorical(torch.ones(8) / 8)))
            ...         lines.append(f"{i} + 1 = {d}\\n")
            ...         calculator.twist(f"prm_{i}", prompt, lines)
            ...     ppl.answer("".join(lines))
            >>> ppl.smc(count, "count", num_particles=32, seed=0).answer_distribution()
            {'0 + 1 = 1\\n1 + 1 = 2\\n': 1.0}
        """
        p = self.memo(name, question, steps)
        twist(to_log_weight(p, transform, temperature))
        return p

    def trace_scorer(
        self, question: str, *, transform: str = "log", temperature: float = 1.0
    ) -> Callable[[Sequence[Trace]], list[float]]:
        """A batched log-score of traces (their ``ppl.step`` values as the steps), for beam search.

        Example:
            >>> from models.verifiers import ProgrammaticVerifier
            >>> likes_c = ProgrammaticVerifier(lambda q, steps: (1 + "".join(steps).count("c")) / 3)
            >>> ppl.beam(program, lm, "a", beam_width=2, num_expansions=4, seed=6,
            ...          score=likes_c.trace_scorer("a")).answers
            ['cc', 'cb']
        """

        def score_traces(traces: Sequence[Trace]) -> list[float]:
            items = [(question, [site.value for site in trace.steps]) for trace in traces]
            return [to_log_weight(p, transform, temperature) for p in self.score_batch(items)]

        return score_traces

    def _check(self, p, item: int, step: int) -> float:
        try:
            value = float(p)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise VerifierError(
                f"{type(self).__name__} returned {p!r} for step {step} of solution {item}; "
                "scores must be probabilities in [0, 1]"
            )
        return value
