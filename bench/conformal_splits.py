"""Calibrated answer sets, abstention and budgets over random splits of saved dataset runs.

Pools the problems of the given ``ppl run --dataset`` directories, then for
each of ``--splits`` random splits calibrates on ``--calibration`` problems
and measures coverage (answer sets), answer rate and risk (abstention, for
several Learn-then-Test procedures), miss rate and samples drawn (budget)
and accuracy and samples drawn (stopping rule) on the rest; prints the means. One
held-out split is noisy with few problems; the mean over splits estimates
the expected coverage the guarantee is about. See ``bench/README.md``.

Run: ``python bench/conformal_splits.py runs/conformal/cal runs/conformal/heldout``
"""

from __future__ import annotations

import math

import click
import numpy as np

from inference.conformal import (
    Abstention,
    AnswerSets,
    CalibrationData,
    SampleBudget,
    StoppingRule,
)
from ppl.cli.report import load_runs

# Randomized p-values unless marked "plain".
ABSTENTION_PROCEDURES = {
    "split-start": {},
    "split-start plain": {"randomized": False},
    "fixed-sequence x4": {"procedure": "fixed-sequence", "starts": 4},
    "pareto": {"procedure": "pareto"},
}


@click.command()
@click.argument("directories", nargs=-1, required=True)
@click.option("--calibration", default=60, show_default=True, help="Problems to calibrate on.")
@click.option("--splits", default=200, show_default=True, help="Random splits.")
def main(directories: tuple[str, ...], calibration: int, splits: int) -> None:
    """Pool DIRECTORIES and report calibrated decisions over random splits."""
    data = CalibrationData(tuple(e for d in directories for e in load_runs(d)))
    click.echo(
        f"{len(data)} problems; MAP accuracy {data.accuracy:.3f}; a right answer sampled in "
        f"{data.sampled_rate:.3f}; {splits} splits of {calibration} calibration + "
        f"{len(data) - calibration} held-out"
    )
    click.echo("\nanswer sets        coverage  (sd)    mean size  empty  infinite threshold")
    for alpha in (0.1, 0.2, 0.3):
        for score in ("lac", "aps"):
            rows = []
            for split in range(splits):
                cal, test = data.split(calibration, seed=split)
                sets = AnswerSets(alpha, score=score, seed=split).calibrate(cal)
                result = sets.evaluate(test)
                rows.append(
                    (result.coverage, result.mean_set_size, result.empty_rate, sets.threshold)
                )
            coverage, size, empty, threshold = np.array(rows).T
            click.echo(
                f"alpha {alpha:.1f} {score}      {coverage.mean():.3f}  ({coverage.std():.3f})  "
                f"{size.mean():9.2f}  {empty.mean():.3f}  {np.isinf(threshold).mean():.2f}"
            )
    click.echo(
        "\nabstention (delta 0.1)          answer rate  risk among answered  held-out risk > target"
    )
    for name, options in ABSTENTION_PROCEDURES.items():
        for risk in (0.3, 0.4, 0.5, 0.6):
            rates, risks = [], []
            for split in range(splits):
                cal, test = data.split(calibration, seed=split)
                rule = Abstention(risk, 0.1, seed=split, **options)
                result = rule.calibrate(cal).evaluate(test)
                rates.append(result.answer_rate)
                risks.append(result.risk)
            answered = [r for r in risks if not math.isnan(r)]
            # The guarantee is over calibration draws: a split that answers nothing cannot fail.
            failed = np.mean([not math.isnan(r) and r > risk for r in risks])
            click.echo(
                f"{name:18} risk {risk:.1f}   {np.mean(rates):.3f}        "
                + (f"{np.mean(answered):.3f}" if answered else "  n/a")
                + f"                {failed:.3f}"
            )
    click.echo("\nbudget (delta 0.1)      miss rate  samples drawn  saved")
    for rule in ("fixed", "agreement"):
        for epsilon in (0.15, 0.25):
            rows = []
            for split in range(splits):
                cal, test = data.split(calibration, seed=split)
                result = SampleBudget(epsilon, 0.1, rule=rule).calibrate(cal).evaluate(test)
                rows.append((result.miss_rate, result.mean_samples, result.samples_saved))
            miss, drawn, saved = np.array(rows).T
            click.echo(
                f"{rule:9} eps {epsilon:.2f}      {miss.mean():.3f}      {drawn.mean():9.2f}  "
                f"{saved.mean():.3f}"
            )
    click.echo("\nstopping (delta 0.1)   accuracy  full accuracy  samples drawn  saved")
    for epsilon in (0.05, 0.1, 0.2):
        rows = []
        for split in range(splits):
            cal, test = data.split(calibration, seed=split)
            result = StoppingRule(epsilon, 0.1, seed=split).calibrate(cal).evaluate(test)
            rows.append(
                (result.accuracy, result.full_accuracy, result.mean_samples, result.samples_saved)
            )
        accuracy, full, drawn, saved = np.array(rows).T
        click.echo(
            f"eps {epsilon:.2f}               {accuracy.mean():.3f}     {full.mean():.3f}"
            f"          {drawn.mean():9.2f}  {saved.mean():.3f}"
        )


if __name__ == "__main__":
    main()
