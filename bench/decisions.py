"""Calibrated decisions on synthetic problems with known truth: validity and power.

For each rule, setting and Learn-then-Test procedure, draws ``--splits``
calibration sets of ``--calibration`` problems, calibrates, and prints

- ``viol``: the fraction of calibration draws whose chosen parameter truly
  breaks the target (must be <= delta up to the noise of ``--splits`` draws);
- ``power``: the mean answer rate (abstention) or fraction of samples saved
  (budgets, stopping), counted only on draws that meet the target, as a
  fraction of the oracle's, the best parameter that truly meets the target;
- ``bound`` (abstention): the most any rule valid at delta can reach on that
  scale (``inference.conformal.power_bound``);
- ``walk`` (abstention): the power of fixed-sequence testing on all the
  problems from the best start, chosen knowing the truth.

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

from inference.conformal import Abstention, SampleBudget, StoppingRule
from inference.conformal.abstention import DEFAULT_THRESHOLDS, TOLERANCE
from inference.conformal.ltt import binomial_pvalues
from inference.conformal.power_bound import abstention_power_bound
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
# Every procedure uses randomized p-values unless marked "plain".
ABSTENTION_PROCEDURES = {
    "split-start": {},
    "split-start plain": {"randomized": False},
    "pareto": {"procedure": "pareto"},
    "fallback": {"procedure": "fallback"},
    "fixed-sequence x4": {"procedure": "fixed-sequence", "starts": 4},
    "fixed-sequence x1": {"procedure": "fixed-sequence", "starts": 1},
    "bonferroni": {"procedure": "bonferroni"},
}
SAMPLING_POOLS = {
    "moderate": SamplingPool(1.2, 1.0, unsolvable=0.04),
    "hard": SamplingPool(0.8, 1.2, unsolvable=0.03),
}
SAMPLING_PROCEDURES = {
    "fixed-sequence": {},
    "fixed-sequence plain": {"randomized": False},
    "split-start": {"procedure": "split-start"},
    "pareto": {"procedure": "pareto"},
}


def kept_power(violations, gains, oracle: float) -> float:
    """Mean gain over the oracle's, counting only the draws that meet the target.

    A draw that breaks the target answers (or saves) more than it may; counting it
    would reward violations: a rule that answered everything on a delta share of
    draws would score delta / oracle.
    """
    return float(np.mean(np.where(np.asarray(violations) > 0, 0.0, gains)) / oracle)


def _cell(violations: list, gains: list, oracle: float) -> str:
    return f"viol {np.mean(violations):.3f} power {kept_power(violations, gains, oracle):.2f}"


def best_start_walk(pool, risk: float, calibration: int, splits: int) -> float:
    """Power of fixed-sequence testing on every problem from the start chosen knowing the truth.

    A reference for walk-based Learn-then-Test: the split procedures spend
    problems to find a start; this one is told the best start for free.
    """
    thresholds = np.asarray(DEFAULT_THRESHOLDS)
    rates, bad = pool.answer_rate(thresholds), pool.risk(thresholds) > risk
    rng, rejected = np.random.default_rng(1), []
    for _ in range(splits):
        confidence, right = pool.draw(calibration, rng)
        answered = confidence[None, :] + TOLERANCE >= thresholds[:, None]
        errors = (answered & ~right[None, :]).sum(axis=1)
        pvalues = binomial_pvalues(errors, answered.sum(axis=1), risk, rng.random())
        rejected.append(pvalues <= DELTA)
    rejected, best = np.array(rejected), 0.0
    oracle = pool.oracle(risk, thresholds)
    for start in np.flatnonzero((rates > 0) & (rates <= oracle)):
        walked = np.cumprod(rejected[:, start:], axis=1).sum(axis=1)
        last = np.minimum(start + walked - 1, len(thresholds) - 1)
        kept = np.where((walked > 0) & ~bad[last], rates[last], 0.0)
        best = max(best, kept.mean() / oracle)
    return best


def abstention_table(calibration: int, splits: int) -> None:
    click.echo(f"abstention: {calibration} calibration problems, {splits} draws, delta {DELTA}")
    header = "".join(f"{p:>22}" for p in ABSTENTION_PROCEDURES)
    click.echo(f"{'pool':26}{'risk':>5}{'oracle':>8}{'bound':>7}{'walk':>6}{header}")
    for name, pool in ABSTENTION_POOLS.items():
        for risk in (0.1, 0.2, 0.3):
            oracle = pool.oracle(risk, DEFAULT_THRESHOLDS)
            if oracle < 0.05:
                continue
            bound = abstention_power_bound(pool, risk, DELTA, calibration)
            walk = best_start_walk(pool, risk, calibration, splits)
            cells = []
            for options in ABSTENTION_PROCEDURES.values():
                rng = np.random.default_rng(0)
                violations, rates = [], []
                for split in range(splits):
                    rule = Abstention(risk, DELTA, seed=split, **options)
                    threshold = rule.calibrate_arrays(*pool.draw(calibration, rng)).threshold
                    answered = np.isfinite(threshold)
                    violations.append(answered and pool.risk(threshold) > risk)
                    rates.append(pool.answer_rate(threshold) if answered else 0.0)
                cells.append(_cell(violations, rates, oracle))
            click.echo(
                f"{name:26}{risk:5.1f}{oracle:8.3f}{bound:7.2f}{walk:6.2f}"
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
                for options in SAMPLING_PROCEDURES.values():
                    rng = np.random.default_rng(1)
                    violations, saved = [], []
                    for split in range(splits):
                        fitted = SampleBudget(
                            epsilon, DELTA, rule=rule, seed=split, **options
                        ).calibrate_arrays(*pool.draw(calibration, max_samples, rng))
                        index = max_samples - fitted.parameter
                        violations.append(fitted.feasible and miss[index] > epsilon)
                        saved.append(1 - used[index] / max_samples)
                    cells.append(_cell(violations, saved, oracle))
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
        f"{'pool':10}{'eps':>6}{'viol':>7}{'saved':>7}{'oracle':>7}{'power':>7}{'plain':>7}"
        f"{'acc early':>10}{'acc full':>9}{'mean drawn':>11}{'fixed k, same acc':>18}"
    )
    for name, pool in SAMPLING_POOLS.items():
        fixed = in_chunks(pool, pool_size, max_samples, majority_accuracy)
        probe = StoppingRule(0.1, DELTA, max_samples=max_samples)
        truth = in_chunks(pool, pool_size, max_samples, partial(stopping_outcomes, probe))
        used, loss, _ = truth
        for epsilon in (0.02, 0.05, 0.1):
            oracle = 1 - used[loss <= epsilon].min() / max_samples
            draws = (pool, epsilon, truth, calibration, splits, max_samples)
            violated, drawn, acc = stopping_draws(*draws)
            plain_violated, plain_drawn, _ = stopping_draws(*draws, randomized=False)
            saved = 1 - drawn.mean() / max_samples
            same = int(np.argmax(fixed >= acc.mean() - 1e-12)) + 1
            power = kept_power(violated, 1 - drawn / max_samples, oracle)
            plain_power = kept_power(plain_violated, 1 - plain_drawn / max_samples, oracle)
            click.echo(
                f"{name:10}{epsilon:6.2f}{violated.mean():7.3f}{saved:7.3f}{oracle:7.3f}"
                f"{power:7.2f}{plain_power:7.2f}{acc.mean():10.3f}{fixed[-1]:9.3f}"
                f"{drawn.mean():11.2f}{same:18d}"
            )


def stopping_draws(pool, epsilon, truth, calibration, splits, max_samples, randomized=True):
    """Per calibration draw: whether the chosen threshold breaks epsilon, draws used, accuracy."""
    used, loss, accuracy = truth
    thresholds = StoppingRule(epsilon).thresholds
    rng, rows = np.random.default_rng(2), []
    for split in range(splits):
        rule = StoppingRule(
            epsilon, DELTA, max_samples=max_samples, seed=split, randomized=randomized
        )
        rule.calibrate_arrays(*pool.draw(calibration, max_samples, rng))
        index = int(np.flatnonzero(thresholds == rule.threshold)[0])
        rows.append((loss[index] > epsilon, used[index], accuracy[index]))
    return np.array(rows).T


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
