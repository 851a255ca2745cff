"""Benchmark summaries: accuracy per method and budget with intervals, and scaling-law fits."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from inference.budget import fit_scaling_law
from ppl.cli.bench.engines import METHODS, VERIFIER_METHODS
from ppl.cli.bench.plots import accuracy_figure, scaling_law_figure
from ppl.errors import InvalidArgumentError
from ppl.files import write_atomic
from ppl.intervals import wilson_interval


def run_key(record: dict) -> tuple:
    """What identifies one engine run: ``(engine, budget, seed, problem id)``."""
    return (record["engine"], record["budget"], record["seed"], record["problem"])


def summarize(
    records: list[dict], methods: Sequence[str], budgets: Sequence[int], seeds: int
) -> list[dict]:
    """One row per (method, budget): accuracy, its 95% interval, and cost per problem.

    Each problem's accuracy is averaged over seeds first; the Wilson interval
    over problems is then conservative, since a mean of outcomes in [0, 1]
    with mean p has variance at most p (1 - p).
    """
    by_run = {run_key(r): r for r in records}
    rows = []
    for method in methods:
        engine = METHODS[method]
        for budget in budgets:
            cell = [r for (e, b, s, _), r in by_run.items() if e == engine and b == budget]
            cell = [r for r in cell if r["seed"] < seeds and method in r["correct"]]
            per_problem: dict[str, list[float]] = defaultdict(list)
            per_seed: dict[int, list[float]] = defaultdict(list)
            for r in cell:
                per_problem[r["problem"]].append(float(r["correct"][method]))
                per_seed[r["seed"]].append(float(r["correct"][method]))
            accuracy = float(np.mean([np.mean(v) for v in per_problem.values()]))
            low, high = wilson_interval(accuracy, len(per_problem))
            verifier_cost = method in VERIFIER_METHODS
            rows.append(
                {
                    "method": method,
                    "budget": budget,
                    "accuracy": accuracy,
                    "ci_low": low,
                    "ci_high": high,
                    "problems": len(per_problem),
                    "seeds": len(per_seed),
                    "tokens_generated_per_problem": _mean(cell, "tokens_generated"),
                    "tokens_scored_per_problem": _mean(cell, "tokens_scored")
                    + (_mean(cell, "verifier_tokens_scored") if verifier_cost else 0.0),
                    "lm_calls_per_problem": _mean(cell, "lm_calls"),
                    "verifier_calls_per_problem": _mean(cell, "verifier_calls")
                    + (_mean(cell, "external_verifier_calls") if verifier_cost else 0.0),
                    "wall_seconds_per_problem": _mean(cell, "wall_seconds")
                    + (_mean(cell, "verifier_seconds") if verifier_cost else 0.0),
                    "coverage": _ceiling(cell, "coverage"),
                    "verified_coverage": _ceiling(cell, "verified_coverage"),
                    "accuracy_per_seed": [float(np.mean(per_seed[s])) for s in sorted(per_seed)],
                }
            )
    return rows


def _mean(records: list[dict], field: str) -> float:
    return float(np.mean([r[field] for r in records])) if records else math.nan


def _ceiling(records: list[dict], field: str) -> float:
    """A ceiling averaged over seeds per problem, then over problems; nan where unrecorded
    (verified coverage without a verifier, or runs stored before ceilings were recorded)."""
    per_problem: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get(field) is not None:
            per_problem[r["problem"]].append(float(r[field]))
    return float(np.mean([np.mean(v) for v in per_problem.values()])) if per_problem else math.nan


def write_outputs(out: Path, config, rows: list[dict], title: str) -> None:
    """``results.csv``, ``results.json`` and ``accuracy.png``, each replaced atomically."""
    columns = [k for k in rows[0] if k != "accuracy_per_seed"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_atomic(out / "results.csv", text.getvalue())
    summary = {
        "config": asdict(config),
        "interval": "Wilson 95% over problems, per-problem accuracy averaged over seeds",
        "results": rows,
    }
    write_atomic(out / "results.json", json.dumps(summary, indent=2))
    write_atomic(out / "accuracy.png", accuracy_figure(rows, title))


def fit_scaling_laws(
    rows: list[dict], out: Path, target: float, confidence: float, seed: int
) -> dict[str, dict]:
    """Fit ``inference.budget.fit_scaling_law`` to each method's accuracy against budget.

    Successes and trials pool problems and seeds at each budget. Writes
    ``scaling_law.json`` (per method: parameters with 95% intervals, NUTS
    diagnostics, predictions at 2x, 4x and 16x the largest budget with 90%
    intervals, and the budget reaching ``target`` with probability
    ``confidence``) and one ``scaling_law_METHOD.png`` per method.
    """
    by_method: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    fits = {}
    for method, series in by_method.items():
        series = sorted(series, key=lambda r: r["budget"])
        if len(series) < 2:
            raise InvalidArgumentError(
                f"--fit needs two budgets or more; {method} has {len(series)}"
            )
        budgets = [r["budget"] for r in series]
        trials = [r["problems"] * r["seeds"] for r in series]
        successes = [round(r["accuracy"] * t) for r, t in zip(series, trials, strict=True)]
        fit = fit_scaling_law(budgets, successes, trials, seed=seed)
        unseen = [2 * budgets[-1], 4 * budgets[-1], 16 * budgets[-1]]
        band = fit.predict(unseen)
        max_budget = 2**16
        planning = {
            "target_accuracy": target,
            "confidence": confidence,
            "max_budget": max_budget,
            "required_budget": fit.required_budget(target, confidence, max_budget=max_budget),
            "predictions": [
                {"budget": float(b), "mean": float(m), "low": float(lo), "high": float(hi)}
                for b, m, lo, hi in zip(
                    band["budget"], band["mean"], band["low"], band["high"], strict=True
                )
            ],
        }
        fits[method] = {**fit.summary(planning), "diagnostics_ok": fit.diagnostics.ok()}
        figure = scaling_law_figure(fit, title=f"{method}: accuracy vs budget")
        write_atomic(out / f"scaling_law_{method}.png", figure)
    write_atomic(out / "scaling_law.json", json.dumps(fits, indent=2))
    return fits
