"""One benchmark run: an engine on one question, and each method's prediction from it.

A method reads its prediction from one engine run, so methods that read the
same engine share its runs (``importance``, ``majority``, ``best_of_n`` and
``weighted_majority`` all read one importance run). Each run also records two
ceilings: coverage (pass@N: some surviving particle is right), which bounds
the accuracy of any rule that selects among the particles, and, with a
verifier, verified coverage (some surviving particle is right and accepted),
which bounds that of any verifier-guided rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from inference import population
from inference.registry import get_engine
from ppl.cli.loading import load_target
from ppl.cli.tasks import Problem, Task
from ppl.errors import EmptyPosteriorError, InvalidArgumentError
from ppl.posterior import Posterior
from ppl.trace import Site, Trace

# Method -> the registered engine whose run it reads.
METHODS = {
    "importance": "importance",
    "majority": "importance",
    "best_of_n": "importance",
    "weighted_majority": "importance",
    "smc": "smc",
    "particle_filtering": "particle_filtering",
    "beam": "beam",
    "dvts": "dvts",
}
VERIFIER_METHODS = ("best_of_n", "weighted_majority")
# Runs that are a registered engine with fixed settings: particle filtering as in
# Puri et al. 2025 and its_hub resamples after every step.
ENGINE_PRESETS = {"particle_filtering": ("smc", {"ess_threshold": 1.0})}
# Registered engines whose runs on many problems share one running batch.
PACKED_ENGINES = ("importance", "smc")


def registered(engine: str) -> tuple[str, dict]:
    """The registered engine a bench engine runs, and its fixed settings."""
    return ENGINE_PRESETS.get(engine, (engine, {}))


def load_verifier(spec: str | None, lm):
    """``calculator``, ``judge`` (an outcome-level LM judge on the same weights),
    ``prm:PATH``, or a ``file.py:name`` holding a verifier or a function returning one."""
    from models import TransformersLM
    from models.verifiers import PRM, LMJudge, ProgrammaticVerifier, Verifier

    if spec is None:
        return None
    if spec == "calculator":
        return ProgrammaticVerifier.calculator()
    if spec == "judge":
        return LMJudge(TransformersLM(lm.model, lm.tokenizer), level="outcome")
    if spec.startswith("prm:"):
        return PRM(spec[4:])
    verifier = load_target(spec)
    if not isinstance(verifier, Verifier) and callable(verifier):
        verifier = verifier()
    if not isinstance(verifier, Verifier):
        raise InvalidArgumentError(f"{spec} is not a verifier (models.verifiers.Verifier)")
    return verifier


def run_seed(base_seed: int, seed_index: int, problem_index: int) -> int:
    """The engine seed of one run; shared by all engines and budgets (common random numbers)."""
    state = np.random.SeedSequence([base_seed, seed_index, problem_index]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


def run_engine(
    engine: str, program, lm, question: str, budget: int, seed: int, verifier, expansions: int
) -> Posterior:
    """One engine run on one question with ``budget`` particles (beam, dvts: children per round).

    Search engines (not ``exact`` in the registry) expand each kept trace
    ``expansions`` ways and rank traces by the verifier's score when there is
    a verifier, else by their likelihood.
    """
    name, settings = registered(engine)
    spec = get_engine(name)
    if spec.exact:
        size = {spec.size_parameter: budget}
        return spec.fn(program, lm, question, **size, **settings, seed=seed)
    score = verifier.trace_scorer(question) if verifier is not None else "likelihood"
    num_expansions = min(expansions, budget)
    width = max(1, budget // num_expansions)
    return spec.fn(
        program,
        lm,
        question,
        **{spec.size_parameter: width},
        num_expansions=num_expansions,
        seed=seed,
        score=score,
    )


def packs(engine: str) -> bool:
    """Whether ``engine``'s runs on many problems can share one running batch."""
    return registered(engine)[0] in PACKED_ENGINES


def run_packed(
    engine: str,
    program,
    lm,
    runs: list[tuple[str, int]],
    budget: int,
    max_rows: int,
    on_result: Callable[[int, Posterior], None],
) -> None:
    """``run_engine`` on every ``(question, seed)`` of ``runs``, their particles in one batch.

    Problems are admitted while their particles fit in ``max_rows`` rows beside
    the others' running particles (``population.run_problems``); each
    gets the posterior and cost ``run_engine`` gives it alone, passed to
    ``on_result(index, posterior)`` as soon as it finishes.
    """
    name, settings = registered(engine)
    problems = [population.Problem(program, (lm, q), seed=seed) for q, seed in runs]
    population.run_problems(
        name,
        problems,
        num_particles=budget,
        max_rows=max_rows,
        on_result=on_result,
        **settings,
    )


def predictions(
    engine: str, posterior: Posterior, task: Task, problem: Problem, verifier
) -> tuple[dict[str, str | None], dict[str, float]]:
    """Each method's normalized answer from one engine run, and the verifier's cost."""
    canonical = [task.canonical(answer) for answer in posterior.answers]
    view = Posterior(
        [Trace((Site("answer", "answer", answer),)) for answer in canonical],
        posterior.log_weights,
    )
    views: dict[str, Callable[[], Any]]
    scores, cost = _verifier_scores(posterior, problem, verifier)
    if engine == "importance":
        views = {"importance": view.map_answer, "majority": view.majority_answer}
        if scores is not None:
            views["best_of_n"] = lambda: view.best_of_n_answer(scores)
            views["weighted_majority"] = lambda: view.weighted_majority_answer(scores)
    elif engine in ("smc", "particle_filtering"):
        views = {engine: view.map_answer}
    else:
        views = {engine: view.best_of_n_answer}
    answers = {}
    for method, read in views.items():
        try:
            answers[method] = read()
        except EmptyPosteriorError:
            answers[method] = None
    return answers, {**cost, **ceilings(posterior, canonical, scores, task, problem)}


def _verifier_scores(posterior: Posterior, problem: Problem, verifier):
    """The verifier's score of every particle's steps, and what scoring them cost."""
    if verifier is None:
        return None, {"verifier_calls": 0, "verifier_tokens_scored": 0, "verifier_seconds": 0.0}
    started, calls = time.perf_counter(), verifier.calls
    scored_before = _tokens_scored(verifier)
    scores = verifier.score_batch(
        [(problem.question, [s.value for s in t.steps]) for t in posterior.particles]
    )
    return scores, {
        "verifier_calls": verifier.calls - calls,
        "verifier_tokens_scored": _tokens_scored(verifier) - scored_before,
        "verifier_seconds": time.perf_counter() - started,
    }


def ceilings(posterior: Posterior, canonical, scores, task: Task, problem: Problem) -> dict:
    """Coverage (some surviving particle is right) and, given verifier ``scores``,
    verified coverage (some surviving particle is right and scores at least 0.5).

    Example:
        >>> task = Task("t", (Problem("p", "q", ("a",)),))
        >>> posterior = Posterior(
        ...     [Trace((Site("answer", "answer", a),)) for a in "aba"], [0.0, 0.0, -math.inf])
        >>> ceilings(posterior, list("aba"), [0.2, 0.9, 0.9], task, task.problems[0])
        {'coverage': True, 'verified_coverage': False}
    """
    alive = [i for i, w in enumerate(posterior.log_weights) if w > -math.inf]
    right = [i for i in alive if task.is_correct(problem, canonical[i])]
    verified = None if scores is None else any(scores[i] >= 0.5 for i in right)
    return {"coverage": bool(right), "verified_coverage": verified}


def _tokens_scored(verifier) -> int:
    stats = getattr(getattr(verifier, "lm", None), "stats", None)
    return stats.tokens_scored if stats is not None else 0
