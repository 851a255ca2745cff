"""Figures of ``ppl bench``: accuracy against compute, and fitted scaling laws."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inference.budget import ScalingLawFit
from ppl.cli.report.plots import png_bytes
from ppl.intervals import wilson_interval


def accuracy_figure(rows: list[dict], title: str) -> bytes:
    """PNG of accuracy against budget (log x) and against tokens generated per problem."""
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    by_budget, by_tokens = figure.subplots(1, 2, sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    drawn: set[tuple] = set()
    for index, method in enumerate(methods):
        series = sorted((r for r in rows if r["method"] == method), key=lambda r: r["budget"])
        accuracy = np.array([r["accuracy"] for r in series])
        errors = np.array(
            [
                [a - r["ci_low"] for a, r in zip(accuracy, series, strict=True)],
                [r["ci_high"] - a for a, r in zip(accuracy, series, strict=True)],
            ]
        )
        # Nudge each method sideways so equal accuracies do not hide each other.
        nudge = 2 ** (0.04 * (index - (len(methods) - 1) / 2))
        budgets = [r["budget"] * nudge for r in series]
        tokens = [max(r["tokens_generated_per_problem"], 1e-9) for r in series]
        by_budget.errorbar(budgets, accuracy, yerr=errors, marker="o", capsize=3, label=method)
        by_tokens.errorbar(tokens, accuracy, yerr=errors, marker="o", capsize=3, label=method)
        _plot_ceilings(by_budget, budgets, series, method, f"C{index % 10}", drawn)
    by_budget.set_xscale("log", base=2)
    by_budget.set_xlabel("budget (particles; beam, dvts: children per round)")
    by_tokens.set_xscale("log")
    by_tokens.set_xlabel("tokens generated per problem")
    by_budget.set_ylabel("accuracy (95% Wilson interval)")
    by_budget.set_ylim(-0.02, 1.02)
    by_budget.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    return png_bytes(figure, dpi=110)


def _plot_ceilings(axes, budgets, series: list[dict], method: str, color, drawn: set) -> None:
    """Coverage (dashed) and verified coverage (dotted), once per distinct curve: methods
    that read one engine run share its particles and so its ceilings."""
    for field, style in (("coverage", "--"), ("verified_coverage", ":")):
        values = [r.get(field, math.nan) for r in series]
        key = (field, tuple(r["budget"] for r in series), tuple(values))
        if all(math.isnan(v) for v in values) or key in drawn:
            continue
        drawn.add(key)
        label = f"{method} {field.replace('_', ' ')}"
        axes.plot(budgets, values, linestyle=style, marker="_", color=color, alpha=0.6, label=label)


def scaling_law_figure(
    fit: ScalingLawFit, *, max_budget: float | None = None, title: str = ""
) -> bytes:
    """PNG of measured accuracy (Wilson 95%) and the fitted curve with a 90% band.

    The curve runs from budget 1 to ``max_budget`` (default: 8 times the largest measured).
    """
    budgets = np.asarray(fit.data["budgets"], dtype=float)
    successes = np.asarray(fit.data["successes"], dtype=float)
    trials = np.asarray(fit.data["trials"], dtype=float)
    grid = np.geomspace(1, max_budget or 8 * budgets.max(), 80)
    band = fit.predict(grid)
    figure = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.fill_between(grid, band["low"], band["high"], alpha=0.25, label="90% interval")
    axes.plot(grid, band["mean"], label="posterior mean")
    rates = successes / trials
    intervals = np.array([wilson_interval(p, int(t)) for p, t in zip(rates, trials, strict=True)])
    axes.errorbar(
        budgets,
        rates,
        yerr=[rates - intervals[:, 0], intervals[:, 1] - rates],
        fmt="o",
        capsize=3,
        label="measured (95% Wilson)",
    )
    axes.set_xscale("log", base=2)
    axes.set_xlabel("budget")
    axes.set_ylabel("accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize="small")
    axes.set_title(title or "accuracy vs budget")
    figure.tight_layout()
    return png_bytes(figure, dpi=110)
