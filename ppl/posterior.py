"""``Posterior``: weighted traces from any engine, with their uncertainty report."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from scipy.special import logsumexp

from ppl.errors import EmptyPosteriorError, InvalidArgumentError, SerializationError
from ppl.files import write_atomic
from ppl.inference_data import to_inference_data
from ppl.serialization import decode, encode
from ppl.trace import Site, Trace
from ppl.weights import effective_sample_size, normalized_weights

FORMAT_VERSION = 1


@dataclass
class Cost:
    """Work spent by a run: tokens, backend calls, verifier (memo) calls, wall time."""

    tokens_generated: int = 0
    tokens_prefilled: int = 0
    tokens_scored: int = 0
    lm_calls: int = 0
    verifier_calls: int = 0
    wall_seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Round:
    """One round of a population run, for the genealogy.

    Slot ``i`` of this round descends from slot ``ancestors[i]`` of the previous
    round. ``texts[i]`` is the choice slot ``i`` made this round (None when it
    made none), ``log_weights`` the weights before any resampling, and
    ``resampled`` whether ``ancestors`` came from a resampling event.
    """

    ancestors: tuple[int, ...]
    texts: tuple[str | None, ...]
    log_weights: tuple[float, ...]
    resampled: bool


class Posterior:
    """Weighted traces of a reasoning program and the report every engine shares.

    ``log_weights`` are unnormalized: within each run, ``logsumexp - log N`` is
    that run's log-evidence estimate. Runs (chains) are independent;
    ``run_index[i]`` says which run particle ``i`` came from.

    Example:
        >>> post = ppl.smc(coin, num_particles=64, seed=0)
        >>> {a: round(p, 3) for a, p in post.answer_distribution().items()}, post.log_evidence
        ({0: 0.578, 1: 0.422}, 0.0)
    """

    def __init__(
        self,
        particles: list[Trace],
        log_weights,
        *,
        run_index=None,
        log_evidences=None,
        ess_history: list[list[float]] | None = None,
        rounds: list[list[Round]] | None = None,
        cost: Cost | None = None,
        method: str = "",
        info: dict[str, Any] | None = None,
    ):
        self.particles = list(particles)
        self.log_weights = np.asarray(log_weights, dtype=float)
        if self.log_weights.shape != (len(self.particles),):
            raise InvalidArgumentError("log_weights must have one entry per particle")
        n = len(self.particles)
        self.run_index = np.zeros(n, dtype=int) if run_index is None else np.asarray(run_index)
        self.num_runs = int(self.run_index.max()) + 1 if n else 0
        if log_evidences is None:
            log_evidences = [self._run_log_mean_weight(k) for k in range(self.num_runs)]
        self.log_evidences = np.asarray(log_evidences, dtype=float)
        self.ess_history = [list(h) for h in (ess_history or [[] for _ in range(self.num_runs)])]
        self.rounds = rounds or [[] for _ in range(self.num_runs)]
        self.cost = cost or Cost()
        self.method = method
        self.info = dict(info or {})

    # --- answers -------------------------------------------------------------
    @property
    def num_particles(self) -> int:
        return len(self.particles)

    @property
    def answers(self) -> list[Any]:
        """Each particle's answer (None for particles that never finished)."""
        return [trace.answer for trace in self.particles]

    @property
    def is_empty(self) -> bool:
        """True when every particle has weight zero (all constraints failed)."""
        return not np.isfinite(self.log_weights).any()

    def answer_distribution(self) -> dict[Any, float]:
        """Posterior probability of each answer: the weighted vote. Empty if ``is_empty``."""
        distribution: dict[Any, float] = {}
        for answer, weight in zip(self.answers, normalized_weights(self.log_weights), strict=True):
            if weight > 0:
                distribution[answer] = distribution.get(answer, 0.0) + float(weight)
        return dict(sorted(distribution.items(), key=lambda item: -item[1]))

    def map_answer(self) -> Any:
        """The answer of highest posterior probability."""
        self._require_nonempty("map_answer")
        return next(iter(self.answer_distribution()))

    def majority_answer(self) -> Any:
        """Self-consistency: the most frequent answer among surviving particles, unweighted.

        Ties go to the answer of higher posterior probability.
        """
        self._require_nonempty("majority_answer")
        alive = [a for a, lw in zip(self.answers, self.log_weights, strict=True) if lw > -np.inf]
        counts = Counter(alive)
        probability = self.answer_distribution()
        return max(counts, key=lambda a: (counts[a], probability.get(a, 0.0)))

    def _require_nonempty(self, what: str) -> None:
        if self.is_empty:
            raise EmptyPosteriorError(
                f"{what}: every particle has weight zero (log_evidence = -inf); "
                "loosen the constraints or use more particles"
            )

    # --- diagnostics ---------------------------------------------------------
    def _run_log_mean_weight(self, run: int) -> float:
        log_weights = self.log_weights[self.run_index == run]
        if not np.isfinite(log_weights).any():
            return -math.inf
        return float(logsumexp(log_weights) - math.log(len(log_weights)))

    @property
    def log_evidence(self) -> float:
        """Estimate of log Z: log of the mean of the runs' unbiased Z estimates.

        NaN when a run has no estimate (MCMC chains estimate expectations, not Z).
        """
        if np.isnan(self.log_evidences).any():
            return math.nan
        if not np.isfinite(self.log_evidences).any():
            return -math.inf
        return float(logsumexp(self.log_evidences) - math.log(len(self.log_evidences)))

    @property
    def log_evidence_se(self) -> float:
        """Standard error of ``log_evidence`` (delta method).

        Across runs when there are two or more; for one run without resampling
        (importance sampling) from the weights, ``sqrt(1/ESS - 1/N)``; NaN for a
        single SMC run that resampled (use ``ppl.run(..., num_runs=K)``) and
        for runs without an evidence estimate (MCMC).
        """
        if np.isnan(self.log_evidences).any():
            return math.nan
        if self.num_runs >= 2:
            if not np.isfinite(self.log_evidences).any():
                return math.nan
            z = np.exp(self.log_evidences - np.max(self.log_evidences))
            return float(np.std(z, ddof=1) / math.sqrt(len(z)) / z.mean())
        if any(r.resampled for r in self.rounds[0]) or self.is_empty:
            return math.nan
        return math.sqrt(max(1.0 / self.ess - 1.0 / self.num_particles, 0.0))

    @property
    def ess(self) -> float:
        """Effective sample size of the final weights."""
        return effective_sample_size(self.log_weights)

    @property
    def genealogy(self) -> nx.DiGraph:
        """Particle genealogy: a node ``(run, round, slot)`` per particle-step.

        Round 0 is each particle's first execution, up to its first random
        choice; round ``t`` holds the ``t``-th choice. Edges go parent ->
        child: from slot ``ancestors[slot]`` of the previous round, which is a
        resampling parent when the population was resampled in between (edge
        attribute ``resampled``). Nodes carry ``run``, ``step`` (the round),
        ``slot``, ``text`` (the choice made that round, None if none),
        ``log_weight`` and ``resampled_from`` (the parent slot when the edge
        came from resampling, else None).

        Example:
            >>> graph = ppl.smc(program, lm, "a", num_particles=8, seed=0).genealogy
            >>> graph.number_of_nodes() == 8 * len(post.rounds[0])
            True
        """
        graph = nx.DiGraph()
        for run, rounds in enumerate(self.rounds):
            for t, rnd in enumerate(rounds):
                for slot, (text, log_weight) in enumerate(
                    zip(rnd.texts, rnd.log_weights, strict=True)
                ):
                    node = (run, t, slot)
                    graph.add_node(
                        node,
                        run=run,
                        step=t,
                        slot=slot,
                        text=text,
                        log_weight=log_weight,
                        resampled_from=rnd.ancestors[slot] if rnd.resampled else None,
                    )
                    if t > 0:
                        graph.add_edge(
                            (run, t - 1, rnd.ancestors[slot]), node, resampled=rnd.resampled
                        )
        return graph

    # --- combining -----------------------------------------------------------
    @classmethod
    def combine(cls, posteriors: list[Posterior]) -> Posterior:
        """Pool independent runs into one posterior (chain = run).

        A run counts in proportion to its evidence estimate: the pooled
        answer distribution is ``sum_k Z_k pi_k / sum_k Z_k``. Weights are
        rescaled by ``mean N / N_k`` so runs of different sizes count by
        ``Z_k`` alone (a no-op for equal sizes, as ``ppl.run`` makes them).
        """
        if not posteriors:
            raise InvalidArgumentError("combine needs at least one posterior")
        offsets = np.cumsum([0] + [p.num_runs for p in posteriors])
        run_sizes = [np.bincount(p.run_index, minlength=p.num_runs) for p in posteriors]
        log_mean_size = math.log(np.mean(np.concatenate(run_sizes)))
        rescaled = [
            p.log_weights - np.log(sizes[p.run_index]) + log_mean_size
            for p, sizes in zip(posteriors, run_sizes, strict=True)
        ]
        return cls(
            [trace for p in posteriors for trace in p.particles],
            np.concatenate(rescaled),
            run_index=np.concatenate(
                [p.run_index + offset for p, offset in zip(posteriors, offsets, strict=False)]
            ),
            log_evidences=np.concatenate([p.log_evidences for p in posteriors]),
            ess_history=[h for p in posteriors for h in p.ess_history],
            rounds=[r for p in posteriors for r in p.rounds],
            cost=sum((p.cost for p in posteriors), Cost()),
            method=posteriors[0].method,
            info={**posteriors[0].info, "num_runs": int(offsets[-1])},
        )

    # --- reporting -----------------------------------------------------------
    def summary(self, max_answers: int = 10) -> str:
        """A plain-text table: answers with probabilities and counts, then diagnostics."""
        distribution = self.answer_distribution()
        counts = Counter(
            a for a, lw in zip(self.answers, self.log_weights, strict=True) if lw > -np.inf
        )
        rows = [(repr(a), f"{p:.3f}", str(counts[a])) for a, p in distribution.items()]
        hidden = len(rows) - max_answers
        rows = rows[:max_answers]
        width = max([len("answer")] + [len(r[0]) for r in rows])
        width = min(width, 60)
        lines = [f"{'answer':<{width}}  {'prob':>6}  {'count':>5}"]
        lines += [f"{a[:width]:<{width}}  {p:>6}  {c:>5}" for a, p, c in rows]
        if hidden > 0:
            lines.append(f"... {hidden} more answers")
        if not rows:
            lines.append("(empty posterior: every particle has weight zero)")
        se = self.log_evidence_se
        se_text = "n/a" if math.isnan(se) else f"{se:.3f}"
        log_z = self.log_evidence
        log_z_text = "n/a" if math.isnan(log_z) else f"{log_z:.3f}"
        resamplings = sum(r.resampled for rounds in self.rounds for r in rounds)
        c = self.cost
        lines += [
            "",
            f"method        {self.method}   runs {self.num_runs}   particles {self.num_particles}",
            f"ESS           {self.ess:.2f}",
            f"log evidence  {log_z_text} +/- {se_text}",
            f"resamplings   {resamplings}",
            f"tokens        {c.tokens_generated} generated, {c.tokens_prefilled} prefilled, "
            f"{c.tokens_scored} scored   LM calls {c.lm_calls}   verifier calls "
            f"{c.verifier_calls}   wall {c.wall_seconds:.1f}s",
        ]
        return "\n".join(lines)

    def to_arviz(self, *, seed: int = 0):
        """ArviZ InferenceData: chain = independent run, draw = particle.

        ``posterior`` holds one-hot ``answer_indicator`` values (dim
        ``answer``, labels most probable first) and every numeric scalar
        sample, memo, factor and observe site, for an equal-weight resample
        of each run (``seed`` fixes it); ``sample_stats`` holds the weighted
        particles' ``log_weight`` and ``tokens`` plus ``ess`` and
        ``resampled`` per step; the ``log_evidence`` group holds one estimate
        per chain. Runs must have equal particle counts. Saves with
        ``to_netcdf`` and loads back with ``az.from_netcdf``. See
        ``ppl.inference_data.to_inference_data``.

        Example:
            >>> import arviz as az
            >>> post = ppl.run("smc", coin, num_runs=4, num_particles=32, seed=0)
            >>> az.rhat(post.to_arviz())["answer_indicator"].values.round(3)
            array([0.993, 0.993])
        """
        return to_inference_data(self, seed=seed)

    # --- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``Posterior.from_dict`` inverts it exactly."""
        return {
            "format": FORMAT_VERSION,
            "method": self.method,
            "info": encode(self.info, "info"),
            "particles": [
                [_encode_site(site, i) for site in trace.sites]
                for i, trace in enumerate(self.particles)
            ],
            "log_weights": self.log_weights.tolist(),
            "run_index": self.run_index.tolist(),
            "log_evidences": self.log_evidences.tolist(),
            "ess_history": self.ess_history,
            "rounds": [[asdict(r) for r in rounds] for rounds in self.rounds],
            "cost": asdict(self.cost),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Posterior:
        if data.get("format") != FORMAT_VERSION:
            raise SerializationError(f"unsupported posterior format {data.get('format')!r}")
        return cls(
            [Trace(tuple(_decode_site(s) for s in sites)) for sites in data["particles"]],
            data["log_weights"],
            run_index=data["run_index"],
            log_evidences=data["log_evidences"],
            ess_history=data["ess_history"],
            rounds=[
                [
                    Round(
                        tuple(r["ancestors"]),
                        tuple(r["texts"]),
                        tuple(r["log_weights"]),
                        r["resampled"],
                    )
                    for r in rounds
                ]
                for rounds in data["rounds"]
            ],
            cost=Cost(**data["cost"]),
            method=data["method"],
            info=decode(data["info"]),
        )

    def save(self, path: str | Path) -> None:
        """Write the posterior as JSON (``-inf`` weights are written as ``-Infinity``).

        The file is replaced atomically: a reader sees the old posterior or the new one.
        """
        write_atomic(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Posterior:
        """Read a posterior written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        return (
            f"<Posterior {self.method} runs={self.num_runs} particles={self.num_particles} "
            f"ess={self.ess:.1f} log_evidence={self.log_evidence:.3f}>"
        )

    # --- verifier views ------------------------------------------------------
    def best_of_n_answer(self, scores=None) -> Any:
        """Best-of-N: the answer of the surviving particle with the highest score.

        ``scores`` (one per particle) is a sequence, the name of a ``ppl.memo``
        site holding each particle's score, or a function of the trace; by
        default the log weights. Ties go to the earlier particle.

        Example:
            >>> new = ppl.importance(add, 4, 5, num_particles=8, seed=0)
            >>> new.answers
            ['7', '7', '11', '8', '9', '8', '8', '8']
            >>> new.best_of_n_answer("check.score"), new.map_answer()
            ('9', '8')
        """
        self._require_nonempty("best_of_n_answer")
        values = self.log_weights if scores is None else self._particle_scores(scores)
        alive = np.flatnonzero(self.log_weights > -np.inf)
        return self.answers[alive[np.argmax(values[alive])]]

    def weighted_vote(self, scores) -> dict[Any, float]:
        """Weighted majority vote: each answer's share of the total score of surviving particles.

        ``scores`` are non-negative (verifier probabilities), given as in
        ``best_of_n_answer``. Empty when every score is zero.

        Example:
            >>> votes = ppl.importance(add, 3, 2, num_particles=3, seed=0)
            >>> votes.answers
            ['5', '3', '7']
            >>> {a: round(share, 3) for a, share in votes.weighted_vote([0.9, 0.2, 0.7]).items()}
            {'5': 0.5, '7': 0.389, '3': 0.111}
        """
        values = self._particle_scores(scores)
        if (values < 0).any():
            raise InvalidArgumentError("weighted_vote needs non-negative scores")
        totals: dict[Any, float] = {}
        for answer, value, log_weight in zip(self.answers, values, self.log_weights, strict=True):
            if log_weight > -np.inf:
                totals[answer] = totals.get(answer, 0.0) + float(value)
        total = sum(totals.values())
        if total == 0:
            return {}
        return dict(sorted(((a, v / total) for a, v in totals.items()), key=lambda kv: -kv[1]))

    def weighted_majority_answer(self, scores) -> Any:
        """The answer with the largest total score (see ``weighted_vote``)."""
        distribution = self.weighted_vote(scores)
        if not distribution:
            raise EmptyPosteriorError("weighted_majority_answer: every surviving score is zero")
        return next(iter(distribution))

    def _particle_scores(self, scores) -> np.ndarray:
        if isinstance(scores, str):
            missing = [i for i, t in enumerate(self.particles) if scores not in t]
            if missing:
                raise InvalidArgumentError(f"particle {missing[0]} has no site {scores!r}")
            values = [t[scores].value for t in self.particles]
        elif callable(scores):
            values = [scores(t) for t in self.particles]
        else:
            values = list(scores)
        values = np.asarray(values, dtype=float)
        if values.shape != (self.num_particles,) or np.isnan(values).any():
            raise InvalidArgumentError(
                f"scores must be one number per particle ({self.num_particles}), got {scores!r}"
            )
        return values


def _encode_site(site: Site, particle: int) -> dict[str, Any]:
    # Fingerprints are process-local hashes; a loaded trace replays without them.
    return {
        "name": site.name,
        "kind": site.kind,
        "value": encode(site.value, f"site {site.name!r} of particle {particle}"),
        "log_prob": site.log_prob,
        "log_weight": site.log_weight,
    }


def _decode_site(data: dict[str, Any]) -> Site:
    return Site(
        data["name"], data["kind"], decode(data["value"]), data["log_prob"], data["log_weight"]
    )
