"""How sure a run is: the diagnostics every engine's posterior reports.

- ESS (Kish) of the final weights and after every step, per run;
- Pareto k of the final importance weights (PSIS): the tail index of the
  weight distribution, ``k > 0.7`` meaning estimates are unreliable;
- R-hat and ESS across independent runs on the answer indicators (runs are
  chains, an equal-weight resample of each run its draws);
- log-evidence mean and standard error across runs;
- answer probabilities with intervals: a bootstrap over runs when there are
  enough runs, otherwise the Dirichlet posterior on effective counts (for
  MCMC chains, each answer's autocorrelation ESS);
- resampling events and cost; and warnings when any of these look bad.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ppl.answers import answer_label
from ppl.chains import chain_diagnostics
from ppl.errors import InvalidArgumentError
from ppl.inference_data import INDICATOR, resampled_after, to_inference_data
from ppl.intervals import bootstrap_intervals, check_level, dirichlet_intervals
from ppl.posterior import Cost, Posterior
from ppl.weights import effective_sample_size, normalized_weights

LOW_ESS_FRACTION = 0.1
MAX_PARETO_K = 0.7
MAX_RHAT = 1.01
# PSIS fits the largest ceil(min(N/5, 3 sqrt(N))) weights and needs more than 4 of them.
MIN_PARETO_PARTICLES = 21
# Percentile intervals over fewer runs undercover: at 90% nominal, about 0.75 with
# 4 runs and 0.85 with 10 (simulated importance sampling runs).
MIN_BOOTSTRAP_RUNS = 10


def pareto_k(log_weights) -> float:
    """Pareto shape ``k`` of the right tail of importance weights, from ArviZ's PSIS.

    ``k < 0.5``: the weights have finite variance; ``0.5 <= k <= 0.7``: usable
    but slow to converge; ``k > 0.7``: estimates from these weights are
    unreliable. For a N(0, 1) target and a N(0, s^2) proposal, ``k = 1 - s^2``.
    Weights of ``-inf`` (dead particles) are left out. Returns NaN when ``k``
    is undefined: all finite weights equal (no tail) or too few of them to
    fit one (fewer than 21).

    ArviZ 0.x ``psislw`` takes log weights; ArviZ 1.x takes their negation
    (the log-likelihood convention of PSIS-LOO). This is the one place that
    knows, so callers always pass log weights.

    Example:
        >>> x = np.random.default_rng(0).normal(0.0, 0.6, 20000)
        >>> round(pareto_k(-x**2 / 2 + x**2 / (2 * 0.6**2)), 1)
        0.6
    """
    import arviz as az

    log_weights = np.asarray(log_weights, dtype=float).ravel()
    if np.isnan(log_weights).any() or np.isposinf(log_weights).any():
        raise InvalidArgumentError("pareto_k: log weights must be finite or -inf")
    finite = log_weights[np.isfinite(log_weights)]
    if finite.size < MIN_PARETO_PARTICLES or np.ptp(finite) == 0:
        return math.nan
    argument = finite if int(az.__version__.split(".")[0]) < 1 else -finite
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        _, k = az.psislw(argument)
    k = float(k)
    return k if math.isfinite(k) else math.nan


def across_runs(idata, statistic: str = "rhat") -> dict[str, float]:
    """R-hat (``statistic="rhat"``) or bulk ESS (``"ess"``) of each answer indicator across runs.

    Runs are chains and their equal-weight resamples are draws. Runs of
    weight zero are left out. An indicator that never varies gets NaN (no
    information); one that is constant within every run but differs between
    runs gets R-hat ``inf``. Empty when fewer than two runs or four draws.

    Example:
        >>> post = ppl.run("smc", coin, num_runs=4, num_particles=32, seed=0)
        >>> {label: round(r, 3) for label, r in across_runs(post.to_arviz(), "rhat").items()}
        {'0': 0.993, '1': 0.993}
    """
    import arviz as az

    if statistic not in ("rhat", "ess"):
        raise InvalidArgumentError(f"statistic must be 'rhat' or 'ess', got {statistic!r}")
    indicators = idata.posterior[INDICATOR]
    if indicators.sizes["chain"] < 2 or indicators.sizes["draw"] < 4:
        return {}
    function = az.rhat if statistic == "rhat" else az.ess
    results = {}
    for j, label in enumerate(indicators.coords["answer"].values.tolist()):
        values = indicators.values[:, :, j]
        values = values[~np.isnan(values).any(axis=1)]
        if values.shape[0] < 2 or np.ptp(values) == 0:
            results[label] = math.nan
            continue
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = float(function(values))
        if math.isnan(value) and statistic == "rhat":
            value = math.inf
        results[label] = value
    return results


@dataclass(frozen=True)
class AnswerEstimate:
    """One answer: posterior probability, interval, surviving particles, probability per run."""

    answer: Any
    label: str
    probability: float
    lower: float
    upper: float
    count: int
    run_probabilities: tuple[float, ...]


@dataclass(frozen=True)
class RunDiagnostics:
    """Diagnostics of one independent run (chain)."""

    run: int
    num_particles: int
    log_evidence: float
    ess: float
    pareto_k: float
    ess_history: list[float]
    resampled_after: list[int]


@dataclass(frozen=True)
class Diagnostics:
    """The uncertainty report of a posterior; ``diagnose`` builds it.

    Example:
        >>> report = diagnose(ppl.run("smc", coin, num_runs=4, num_particles=32, seed=0))
        >>> print(*report.text().splitlines()[:3], sep="\\n")
        answer    prob       95% interval  count
        0        0.633     [0.547, 0.713]     81
        1        0.367     [0.287, 0.453]     47
    """

    method: str
    num_runs: int
    num_particles: int
    answers: list[AnswerEstimate]
    interval_method: str
    level: float
    ess: float
    pareto_k: float
    rhat: dict[str, float]
    ess_across_runs: dict[str, float]
    log_evidence: float
    log_evidence_se: float
    runs: list[RunDiagnostics]
    cost: Cost
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_rhat(self) -> float:
        """Largest finite-or-infinite R-hat over answers; NaN when there is none."""
        values = [v for v in self.rhat.values() if not math.isnan(v)]
        return max(values) if values else math.nan

    @property
    def num_resamplings(self) -> int:
        return sum(len(run.resampled_after) for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dict (NaN and infinities become ``None``)."""
        data = {
            "method": self.method,
            "num_runs": self.num_runs,
            "num_particles": self.num_particles,
            "answers": [
                {
                    "answer": a.label,
                    "probability": a.probability,
                    "lower": a.lower,
                    "upper": a.upper,
                    "count": a.count,
                    "run_probabilities": list(a.run_probabilities),
                }
                for a in self.answers
            ],
            "interval_method": self.interval_method,
            "level": self.level,
            "ess": self.ess,
            "pareto_k": self.pareto_k,
            "max_rhat": self.max_rhat,
            "rhat": self.rhat,
            "ess_across_runs": self.ess_across_runs,
            "log_evidence": self.log_evidence,
            "log_evidence_se": self.log_evidence_se,
            "num_resamplings": self.num_resamplings,
            "runs": [asdict(run) for run in self.runs],
            "cost": asdict(self.cost),
            "warnings": self.warnings,
            "notes": self.notes,
        }
        return _strict_json(data)

    def text(self, max_answers: int = 10) -> str:
        """A plain-text report: answers with intervals, diagnostics, warnings."""
        percent = f"{self.level:.0%}"
        shown = self.answers[:max_answers]
        width = min(max([len("answer")] + [len(a.label) for a in shown]), 60)
        lines = [f"{'answer':<{width}}  {'prob':>6}  {percent + ' interval':>17}  {'count':>5}"]
        for a in shown:
            interval = f"[{a.lower:.3f}, {a.upper:.3f}]"
            lines.append(
                f"{a.label[:width]:<{width}}  {a.probability:>6.3f}  {interval:>17}  {a.count:>5}"
            )
        if len(self.answers) > max_answers:
            lines.append(f"... {len(self.answers) - max_answers} more answers")
        if not self.answers:
            lines.append("(empty posterior: every particle has weight zero)")
        c = self.cost
        lines += [
            "",
            f"method          {self.method}   runs {self.num_runs}   "
            f"particles {self.num_particles}   intervals {self.interval_method}",
            f"ESS             {self.ess:.2f}   (per run: "
            + ", ".join(f"{r.ess:.1f}" for r in self.runs)
            + ")",
            f"Pareto k        {format_number(self.pareto_k)}",
            f"R-hat (max)     {format_number(self.max_rhat)}",
            f"log evidence    {format_number(self.log_evidence)} +/- "
            f"{format_number(self.log_evidence_se)}",
            f"resamplings     {self.num_resamplings}",
            f"cost            {c.tokens_generated} tokens generated, {c.tokens_prefilled} "
            f"prefilled, {c.tokens_scored} scored, {c.lm_calls} LM calls, "
            f"{c.verifier_calls} verifier calls, {c.wall_seconds:.1f}s",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def diagnose(
    posterior: Posterior,
    *,
    level: float = 0.95,
    intervals: str = "auto",
    seed: int = 0,
    low_ess_fraction: float = LOW_ESS_FRACTION,
    max_pareto_k: float = MAX_PARETO_K,
    max_rhat: float = MAX_RHAT,
) -> Diagnostics:
    """The uncertainty report of ``posterior``, with warnings.

    ``intervals`` is ``"bootstrap"`` (over runs), ``"dirichlet"`` (effective
    counts: the weights' ESS, or for MCMC chains each answer's autocorrelation
    ESS) or ``"auto"``: bootstrap with at least 10 runs, else Dirichlet.
    Warnings: a run whose final ESS is below ``low_ess_fraction`` of its
    particles, Pareto ``k > max_pareto_k``, R-hat ``> max_rhat``, runs whose
    particles all have weight zero. ``seed`` fixes the equal-weight resample
    behind R-hat and the bootstrap.

    Example:
        >>> report = diagnose(ppl.run("smc", coin, num_runs=4, num_particles=32, seed=0))
        >>> best = report.answers[0]
        >>> report.warnings, best.label, round(best.lower, 3), round(best.upper, 3)
        ([], '0', 0.547, 0.713)
    """
    check_level(level)
    if intervals not in ("auto", "bootstrap", "dirichlet"):
        raise InvalidArgumentError(
            f"intervals must be 'auto', 'bootstrap' or 'dirichlet', got {intervals!r}"
        )
    if intervals == "auto":
        intervals = "bootstrap" if posterior.num_runs >= MIN_BOOTSTRAP_RUNS else "dirichlet"
    runs = [_run_diagnostics(posterior, k) for k in range(posterior.num_runs)]
    answers = _answer_estimates(posterior, level, intervals, seed)
    rhat, ess_across, notes = _across_runs(posterior, runs, seed)
    warnings_ = _warnings(posterior, runs, rhat, low_ess_fraction, max_pareto_k, max_rhat)
    notes += _notes(posterior, runs, intervals)

    finite_k = [r.pareto_k for r in runs if not math.isnan(r.pareto_k)]
    return Diagnostics(
        method=posterior.method,
        num_runs=posterior.num_runs,
        num_particles=posterior.num_particles,
        answers=answers,
        interval_method=intervals,
        level=level,
        ess=posterior.ess,
        pareto_k=max(finite_k) if finite_k else math.nan,
        rhat=rhat,
        ess_across_runs=ess_across,
        log_evidence=posterior.log_evidence,
        log_evidence_se=posterior.log_evidence_se,
        runs=runs,
        cost=posterior.cost,
        warnings=warnings_,
        notes=notes,
    )


def _across_runs(
    posterior: Posterior, runs: list[RunDiagnostics], seed: int
) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """R-hat and ESS of the answer indicators across runs, or notes on why there are none."""
    if posterior.num_runs < 2:
        return {}, {}, ["R-hat and ESS across runs need at least 2 independent runs (--runs)"]
    if len(set(r.num_particles for r in runs)) != 1:
        return {}, {}, ["R-hat needs the same number of particles in every run"]
    idata = to_inference_data(posterior, seed=seed)
    return across_runs(idata, "rhat"), across_runs(idata, "ess"), []


def _warnings(
    posterior: Posterior,
    runs: list[RunDiagnostics],
    rhat: dict[str, float],
    low_ess_fraction: float,
    max_pareto_k: float,
    max_rhat: float,
) -> list[str]:
    """What says the report is unreliable: no live particle, low ESS, heavy tails, R-hat."""
    warnings_: list[str] = []
    if posterior.is_empty:
        warnings_.append(
            "every particle has weight zero: no answer can be reported; loosen the "
            "constraints or use more particles"
        )
    for run in runs:
        where = f"run {run.run}: " if posterior.num_runs > 1 else ""
        if run.log_evidence == -math.inf:
            if not posterior.is_empty:
                warnings_.append(f"{where}every particle has weight zero")
            continue
        if run.ess < low_ess_fraction * run.num_particles:
            warnings_.append(
                f"{where}final ESS {run.ess:.1f} is below {low_ess_fraction:.0%} of "
                f"{run.num_particles} particles: the answers rest on few particles; "
                "use more particles or a better proposal"
            )
        if run.pareto_k > max_pareto_k:
            warnings_.append(
                f"{where}Pareto k {run.pareto_k:.2f} > {max_pareto_k}: the importance "
                "weights are heavy-tailed and estimates from them are unreliable"
            )
    flagged = {label: value for label, value in rhat.items() if value > max_rhat}
    if flagged:
        worst = max(flagged, key=flagged.get)
        warnings_.append(
            f"R-hat {format_number(flagged[worst])} > {max_rhat} for answer {worst}"
            + (f" and {len(flagged) - 1} more" if len(flagged) > 1 else "")
            + ": independent runs disagree; use more particles"
        )
    return warnings_


def _notes(posterior: Posterior, runs: list[RunDiagnostics], intervals: str) -> list[str]:
    """Why a statistic is missing or what an interval leaves out."""
    notes: list[str] = []
    if any(r.log_evidence > -math.inf for r in runs):
        finite_weights = [
            np.isfinite(posterior.log_weights[posterior.run_index == r.run]) for r in runs
        ]
        if any(m.sum() < MIN_PARETO_PARTICLES for m in finite_weights):
            notes.append(
                f"Pareto k needs at least {MIN_PARETO_PARTICLES} particles of nonzero weight "
                "per run"
            )
        elif all(math.isnan(r.pareto_k) for r in runs):
            notes.append(
                "Pareto k is undefined: the largest weights of each run are tied "
                "(equal weights, or weights taking few values), so there is no tail to fit"
            )
    if math.isnan(posterior.log_evidence_se) and not posterior.is_empty:
        notes.append("the log-evidence standard error needs independent runs (--runs)")
    if intervals == "dirichlet" and any(r.resampled_after for r in runs):
        notes.append(
            f"intervals from effective counts ignore resampling variance; with "
            f"--runs {MIN_BOOTSTRAP_RUNS} or more they come from a bootstrap over runs"
        )

    return notes


def format_number(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals, ``n/a`` for NaN."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _run_diagnostics(posterior: Posterior, run: int) -> RunDiagnostics:
    log_weights = posterior.log_weights[posterior.run_index == run]
    history = posterior.ess_history[run] if run < len(posterior.ess_history) else []
    flags = resampled_after(posterior, run) if run < len(posterior.rounds) else []
    return RunDiagnostics(
        run=run,
        num_particles=len(log_weights),
        log_evidence=float(posterior.log_evidences[run]),
        ess=effective_sample_size(log_weights),
        pareto_k=pareto_k(log_weights),
        ess_history=[float(e) for e in history],
        resampled_after=[s for s, flag in enumerate(flags) if flag],
    )


def _indicator_ess(posterior: Posterior, answers: list) -> dict[Any, float]:
    """Per answer, the autocorrelation ESS of its indicator over chains of draws in order.

    ``chain_diagnostics``' bulk ESS, at most the number of draws (an
    antithetic chain does not make an interval narrower than independent
    draws would); an answer no draw or every draw has, or chains of unequal
    length, keep the number of draws.
    """
    total = float(posterior.num_particles)
    try:
        per_answer = chain_diagnostics(posterior)
    except InvalidArgumentError:
        return dict.fromkeys(answers, total)
    effective = {}
    for answer in answers:
        ess = per_answer[answer]["ess"] if answer in per_answer else math.nan
        effective[answer] = min(ess, total) if math.isfinite(ess) else total
    return effective


def _answer_estimates(
    posterior: Posterior, level: float, method: str, seed: int
) -> list[AnswerEstimate]:
    distribution = posterior.answer_distribution()
    answers = list(distribution)
    counts = {a: 0 for a in answers}
    for answer, log_weight in zip(posterior.answers, posterior.log_weights, strict=True):
        if log_weight > -math.inf:
            counts[answer] += 1
    column = {a: j for j, a in enumerate(answers)}
    per_run = np.zeros((posterior.num_runs, len(answers)))
    weights = _run_weights(posterior)
    for i, answer in enumerate(posterior.answers):
        if weights[i] > 0:
            per_run[posterior.run_index[i], column[answer]] += weights[i]
    if method == "dirichlet" and posterior.info.get("draws_in_order"):
        # MCMC draws are autocorrelated: each answer gets its own effective count.
        effective = _indicator_ess(posterior, answers)
        bounds = [dirichlet_intervals(distribution, effective[a], level)[a] for a in answers]
        lower, upper = zip(*bounds, strict=True) if bounds else ((), ())
    elif method == "dirichlet":
        bounds = dirichlet_intervals(distribution, posterior.ess, level)
        lower = [bounds[a][0] for a in answers]
        upper = [bounds[a][1] for a in answers]
    else:
        lower, upper = bootstrap_intervals(per_run, posterior.log_evidences, level, seed=seed)
    return [
        AnswerEstimate(
            a,
            answer_label(a),
            distribution[a],
            float(lo),
            float(hi),
            counts[a],
            tuple(float(p) for p in per_run[:, j]),
        )
        for j, (a, lo, hi) in enumerate(zip(answers, lower, upper, strict=True))
    ]


def _run_weights(posterior: Posterior) -> np.ndarray:
    """Weights normalized within each run."""
    weights = np.zeros(posterior.num_particles)
    for k in range(posterior.num_runs):
        members = posterior.run_index == k
        weights[members] = normalized_weights(posterior.log_weights[members])
    return weights


def _strict_json(value):
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value
