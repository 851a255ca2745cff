"""Calibrated decisions on synthetic problems with known truth: validity and power.

For each rule, setting and Learn-then-Test procedure, draws ``--splits``
calibration sets of ``--calibration`` problems, calibrates, and prints

- ``viol``: the fraction of calibration draws whose chosen parameter truly
  breaks the target (must be <= delta up to the noise of ``--splits`` draws);
- ``power``: the mean answer rate (abstention) or fraction of samples saved
  (budgets, stopping) as a fraction of the oracle's, the best parameter
  that truly meets the target.

True risks are exact for abstention and fixed budgets
(``inference.conformal.synthetic``) and measured on a pool of ``--pool``
problems for the agreement budget and the stopping rule. See
``bench/README.md``.

Run: ``python bench/decisions.py``
"""

from __future__ import annotations

from functools import partial

import click
import numpy as np
from scipy import stats

from inference.conformal import Abstention, SampleBudget, StoppingRule
from inference.conformal.abstention import DEFAULT_THRESHOLDS
from inference.conformal.synthetic import ConfidencePool, SamplingPool, VotePool
from inference.conformal.units import running_counts

DELTA = 0.1
ABSTENTION_POOLS = {
    # MAP right 61%; confidence >= 0.7 answers 38% at an error rate of 0.20.
    "calibrated, 61% right": ConfidencePool(3.689, 2.221, 1.055),
    "easy, 77% right": ConfidencePool(5.0, 1.5, 1.0),
    "overconfident, 55% right": ConfidencePool(6.0, 1.5, 3.0),
    "hard, 28% right": ConfidencePool(2.0, 3.0, 1.5),
    "vote shares of 10": VotePool(
        tuple(np.arange(1, 11) / 10),
        (0.02, 0.08, 0.12, 0.12, 0.12, 0.1, 0.1, 0.1, 0.1, 0.14),
        (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.78, 0.85, 0.9, 0.95),
    ),
}
ABSTENTION_PROCEDURES = (
    ("split-start", None),
    ("pareto", None),
    ("fallback", None),
    ("fixed-sequence", 4),
    ("fixed-sequence", 1),
    ("bonferroni", None),
)
SAMPLING_POOLS = {
    "moderate": SamplingPool(1.2, 1.0, unsolvable=0.04),
    "hard": SamplingPool(0.8, 1.2, unsolvable=0.03),
}
SAMPLING_PROCEDURES = ("fixed-sequence", "split-start", "pareto")


def _name(procedure: str, starts: int | None) -> str:
    return procedure if starts is None else f"{procedure} x{starts}"


def single_test_reference(pool, risk: float, num_problems: int) -> float:
    """Best answer rate x power of one binomial test at a threshold chosen knowing the truth."""
    best, n = 0.0, np.arange(num_problems + 1)
    thresholds = np.asarray(DEFAULT_THRESHOLDS)
    for rate, true_risk in zip(pool.answer_rate(thresholds), pool.risk(thresholds), strict=True):
        if true_risk > risk or rate == 0:
            continue
        critical = stats.binom.ppf(DELTA, n, risk)
        critical = np.where(stats.binom.cdf(critical, n, risk) <= DELTA, critical, critical - 1)
        power = np.sum(
            stats.binom.pmf(n, num_problems, rate) * stats.binom.cdf(critical, n, true_risk)
        )
        best = max(best, power * rate)
    return best


def abstention_table(calibration: int, splits: int) -> None:
    click.echo(f"abstention: {calibration} calibration problems, {splits} draws, delta {DELTA}")
    header = "".join(f"{_name(*p):>22}" for p in ABSTENTION_PROCEDURES)
    click.echo(f"{'pool':26}{'risk':>5}{'oracle':>8}{'1-test':>7}{header}")
    for name, pool in ABSTENTION_POOLS.items():
        for risk in (0.1, 0.2, 0.3):
            oracle = pool.oracle(risk, DEFAULT_THRESHOLDS)
            if oracle < 0.05:
                continue
            reference = single_test_reference(pool, risk, calibration) / oracle
            cells = []
            for procedure, starts in ABSTENTION_PROCEDURES:
                rng = np.random.default_rng(0)
                violations, rates = [], []
                for split in range(splits):
                    rule = Abstention(risk, DELTA, procedure=procedure, starts=starts, seed=split)
                    threshold = rule.calibrate_arrays(*pool.draw(calibration, rng)).threshold
                    answered = np.isfinite(threshold)
                    violations.append(answered and pool.risk(threshold) > risk)
                    rates.append(pool.answer_rate(threshold) if answered else 0.0)
                cells.append(f"viol {np.mean(violations):.3f} power {np.mean(rates) / oracle:.2f}")
            click.echo(
                f"{name:26}{risk:5.1f}{oracle:8.3f}{reference:7.2f}"
                + "".join(f"{c:>22}" for c in cells)
            )


def in_chunks(pool: SamplingPool, size: int, num_samples: int, measure, seed: int = 99):
    """Mean of ``measure(answers, right)`` (per problem rows) over a pool drawn in chunks."""
    rng, total = np.random.default_rng(seed), 0.0
    chunks = max(size // 20000, 1)
    for _ in range(chunks):
        total = total + measure(*pool.draw(size // chunks, num_samples, rng)).mean(axis=0)
    return total / chunks


def budget_table(calibration: int, splits: int, pool_size: int) -> None:
    max_samples = 12
    click.echo(f"\nbudgets: {max_samples} samples, {calibration} problems, {splits} draws")
    click.echo(
        f"{'pool':10}{'rule':>10}{'eps':>6}{'oracle saved':>13}"
        + "".join(f"{p:>26}" for p in SAMPLING_PROCEDURES)
    )
    for name, pool in SAMPLING_POOLS.items():
        for rule in ("fixed", "agreement"):
            budget = SampleBudget(0.1, DELTA, rule=rule, max_samples=max_samples)
            parameters = np.arange(max_samples, 0, -1)
            used, miss = in_chunks(
                pool, pool_size, max_samples, partial(budget_outcomes, budget, parameters)
            )
            if rule == "fixed":
                miss = pool.fixed_miss_rate(parameters)
            for epsilon in (0.1, 0.2, 0.3):
                valid = miss <= epsilon
                if not valid.any() or used[valid].min() == max_samples:
                    continue  # infeasible, or nothing to save
                oracle = 1 - used[valid].min() / max_samples
                cells = []
                for procedure in SAMPLING_PROCEDURES:
                    rng = np.random.default_rng(1)
                    violations, saved = [], []
                    for split in range(splits):
                        fitted = SampleBudget(
                            epsilon, DELTA, rule=rule, procedure=procedure, seed=split
                        ).calibrate_arrays(*pool.draw(calibration, max_samples, rng))
                        index = max_samples - fitted.parameter
                        violations.append(fitted.feasible and miss[index] > epsilon)
                        saved.append(1 - used[index] / max_samples)
                    power = np.mean(saved) / oracle
                    cells.append(f"viol {np.mean(violations):.3f} power {power:.2f}")
                click.echo(
                    f"{name:10}{rule:>10}{epsilon:6.2f}{oracle:13.3f}"
                    + "".join(f"{c:>26}" for c in cells)
                )


def budget_outcomes(budget: SampleBudget, parameters, answers, right) -> np.ndarray:
    """Per problem: samples drawn and whether all missed, per parameter."""
    return np.stack(budget.play(answers, right, parameters), axis=1)


def majority_accuracy(answers: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per problem and budget ``k``: whether the vote of the first ``k`` samples is right."""
    counts = running_counts(answers)
    leader = counts.argmax(axis=2)
    return np.take_along_axis(right, leader, axis=1) & (counts.max(axis=2) > 0)


def stopping_table(calibration: int, splits: int, pool_size: int) -> None:
    max_samples = 16
    click.echo(
        f"\nstopping rule: up to {max_samples} samples, {calibration} problems, {splits} draws"
    )
    click.echo(
        f"{'pool':10}{'eps':>6}{'viol':>7}{'saved':>7}{'oracle':>7}{'power':>7}"
        f"{'acc early':>10}{'acc full':>9}{'mean drawn':>11}{'fixed k, same acc':>18}"
    )
    for name, pool in SAMPLING_POOLS.items():
        fixed = in_chunks(pool, pool_size, max_samples, majority_accuracy)
        probe = StoppingRule(0.1, DELTA, max_samples=max_samples)
        used, loss, accuracy = in_chunks(
            pool, pool_size, max_samples, partial(stopping_outcomes, probe)
        )
        for epsilon in (0.02, 0.05, 0.1):
            oracle = 1 - used[loss <= epsilon].min() / max_samples
            rows = []
            rng = np.random.default_rng(2)
            for split in range(splits):
                rule = StoppingRule(epsilon, DELTA, max_samples=max_samples, seed=split)
                rule.calibrate_arrays(*pool.draw(calibration, max_samples, rng))
                index = int(np.flatnonzero(probe.thresholds == rule.threshold)[0])
                rows.append((loss[index] > epsilon, used[index], accuracy[index]))
            violated, drawn, acc = np.array(rows).T
            saved = 1 - drawn.mean() / max_samples
            same = int(np.argmax(fixed >= acc.mean() - 1e-12)) + 1
            click.echo(
                f"{name:10}{epsilon:6.2f}{violated.mean():7.3f}{saved:7.3f}{oracle:7.3f}"
                f"{saved / oracle:7.2f}{acc.mean():10.3f}{fixed[-1]:9.3f}{drawn.mean():11.2f}"
                f"{same:18d}"
            )


def stopping_outcomes(rule: StoppingRule, answers: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Per problem: draws used, loss and whether the early answer is right, per threshold."""
    used, lost = rule.play(answers, right, rule.thresholds)
    counts = running_counts(answers)
    early = counts[np.arange(len(answers))[:, None], used - 1]
    correct = np.take_along_axis(right, early.argmax(axis=2), axis=1) & (early.max(axis=2) > 0)
    return np.stack([used, lost, correct], axis=1)


@click.command()
@click.option("--calibration", default=500, show_default=True, help="Calibration problems.")
@click.option("--splits", default=200, show_default=True, help="Calibration draws.")
@click.option("--pool", "pool_size", default=100000, show_default=True, help="Truth pool size.")
def main(calibration: int, splits: int, pool_size: int) -> None:
    """Print violation rates and power against the oracle for every decision rule."""
    abstention_table(calibration, splits)
    budget_table(calibration, splits, pool_size)
    stopping_table(calibration, splits, pool_size)


if __name__ == "__main__":
    main()
