"""Figures of the uncertainty report, as matplotlib ``Figure`` objects.

Figures are built without pyplot (no global state, no display needed);
``png_bytes`` renders one. The rank plot comes from ArviZ.
"""

from __future__ import annotations

import io

import networkx as nx
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ppl.diagnostics import Diagnostics, format_number
from ppl.inference_data import INDICATOR
from ppl.posterior import Posterior

MAX_ANSWERS = 10
MAX_RANK_ANSWERS = 3
MAX_GENEALOGY_RUNS = 4
LABEL_WIDTH = 40


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    """Render ``figure`` as PNG.

    Example:
        >>> from ppl.diagnostics import diagnose
        >>> png_bytes(answers_figure(diagnose(post)))[1:4]  # the PNG signature
        b'PNG'
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def answers_figure(diagnostics: Diagnostics) -> Figure:
    """Posterior probability of the most probable answers, with intervals and per-run dots."""
    answers = diagnostics.answers[:MAX_ANSWERS][::-1]
    figure = Figure(figsize=(7.5, 1.2 + 0.45 * max(len(answers), 1)), layout="constrained")
    ax = figure.add_subplot()
    if not answers:
        _empty(ax, "empty posterior: every particle has weight zero")
        return figure
    y = np.arange(len(answers))
    probabilities = np.array([a.probability for a in answers])
    errors = np.array(
        [[a.probability - a.lower for a in answers], [a.upper - a.probability for a in answers]]
    )
    ax.barh(y, probabilities, color="#4c72b0", alpha=0.8, label="posterior probability")
    ax.errorbar(
        probabilities,
        y,
        xerr=np.clip(errors, 0.0, None),
        fmt="none",
        ecolor="black",
        capsize=4,
        label=f"{diagnostics.level:.0%} interval ({diagnostics.interval_method})",
    )
    if diagnostics.num_runs > 1:
        for j, answer in enumerate(answers):
            runs = answer.run_probabilities
            ax.scatter(runs, np.full(len(runs), j), s=14, color="#dd8452", zorder=3)
        ax.scatter([], [], s=14, color="#dd8452", label="single runs")
    ax.set_yticks(y, [_text(a.label) for a in answers])
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("probability")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Posterior over answers")
    return figure


def ess_figure(diagnostics: Diagnostics) -> Figure:
    """ESS after every step, one line per run; crosses mark resampling after that step."""
    figure = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = figure.add_subplot()
    if not any(run.ess_history for run in diagnostics.runs):
        _empty(ax, "this method records no per-step ESS")
        return figure
    for run in diagnostics.runs:
        steps = np.arange(1, len(run.ess_history) + 1)
        (line,) = ax.plot(steps, run.ess_history, marker=".", label=f"run {run.run}")
        resampled = np.array(run.resampled_after, dtype=int)
        if resampled.size:
            ax.scatter(
                resampled + 1,
                np.asarray(run.ess_history)[resampled],
                marker="x",
                s=40,
                color=line.get_color(),
            )
    ax.axhline(diagnostics.runs[0].num_particles, color="grey", linestyle=":", linewidth=1)
    ax.scatter([], [], marker="x", color="black", label="resampled after")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("ESS")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title("Effective sample size per step")
    return figure


def weights_figure(posterior: Posterior, diagnostics: Diagnostics) -> Figure:
    """Histogram of final log weights and the right tail of the weights on log-log axes."""
    figure = Figure(figsize=(7.5, 3.2), layout="constrained")
    histogram, tail = figure.subplots(1, 2)
    finite = np.isfinite(posterior.log_weights)
    dead = int((~finite).sum())
    if not finite.any():
        _empty(histogram, "every particle has weight zero")
        _empty(tail, "")
        return figure
    for k in range(posterior.num_runs):
        log_weights = posterior.log_weights[(posterior.run_index == k) & finite]
        if log_weights.size == 0:
            continue
        relative = log_weights - log_weights.max()
        histogram.hist(relative, bins=min(30, max(5, relative.size // 3)), alpha=0.5)
        weights = np.sort(np.exp(relative))[::-1]
        top = weights[: max(2, int(np.ceil(0.2 * weights.size)))]
        survival = np.arange(1, top.size + 1) / weights.size
        tail.loglog(top, survival, marker=".", linestyle="none", label=f"run {k}")
    histogram.set_xlabel("log weight - max")
    histogram.set_ylabel("particles")
    histogram.set_title(f"Final log weights ({dead} at zero weight)", fontsize="medium")
    tail.set_xlabel("weight / max weight")
    tail.set_ylabel("fraction of particles >= w")
    tail.set_title(
        f"Largest 20% of weights; Pareto k = {format_number(diagnostics.pareto_k, 2)}",
        fontsize="medium",
    )
    return figure


def genealogy_figure(graph: nx.DiGraph) -> Figure:
    """The particle tree: x = step, y = slot, one panel per run (at most 4).

    Lines join each particle to its parent; lineages that reach a final
    particle of nonzero weight are drawn dark, dead ends light; dashed lines
    mark resampling.
    """
    runs = sorted({run for run, _, _ in graph.nodes})[:MAX_GENEALOGY_RUNS]
    figure = Figure(figsize=(7.5, 2.8 * max(len(runs), 1)), layout="constrained")
    if not runs:
        _empty(figure.add_subplot(), "this method records no genealogy")
        return figure
    axes = np.atleast_1d(figure.subplots(len(runs), 1, squeeze=False)[:, 0])
    for ax, run in zip(axes, runs, strict=True):
        nodes = [n for n in graph.nodes if n[0] == run]
        last = max(step for _, step, _ in nodes)
        survivors = {n for n in nodes if n[1] == last and graph.nodes[n]["log_weight"] > -np.inf}
        ancestry = set(survivors)
        for node in survivors:
            ancestry |= nx.ancestors(graph, node)
        living, dead = [], []
        for parent, child in graph.edges(nodes):
            segment = [(parent[1], parent[2]), (child[1], child[2])]
            (living if child in ancestry else dead).append(segment)
        ax.add_collection(LineCollection(dead, colors="#c8c8c8", linewidths=0.6))
        ax.add_collection(LineCollection(living, colors="#2a4d8f", linewidths=1.2))
        resampled_steps = sorted(
            {child[1] for _, child, data in graph.edges(nodes, data=True) if data["resampled"]}
        )
        for step in resampled_steps:
            ax.axvline(step - 0.5, color="#dd8452", linestyle="--", linewidth=0.8)
        alive = [n for n in nodes if graph.nodes[n]["log_weight"] > -np.inf]
        ax.scatter([n[1] for n in alive], [n[2] for n in alive], s=6, color="#2a4d8f")
        ax.set_xlim(-0.5, last + 0.5)
        ax.set_ylim(-0.5, max(n[2] for n in nodes) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"run {run}: slot")
    axes[-1].set_xlabel("step (dashed: resampled before this step)")
    axes[0].set_title("Particle genealogy")
    return figure


def rank_figure(idata, labels: list[str]) -> Figure:
    """ArviZ rank plots of the most probable answers' indicators across runs."""
    import arviz as az

    labels = labels[:MAX_RANK_ANSWERS]
    figure = Figure(figsize=(2.6 * max(len(labels), 1) + 0.5, 3.0), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, max(len(labels), 1), squeeze=False)[0])
    if not labels:
        _empty(axes[0], "no answers")
        return figure
    az.plot_rank(
        idata.posterior[[INDICATOR]].sel(answer=labels),
        var_names=[INDICATOR],
        ax=axes,
        show=False,
    )
    for ax, label in zip(axes, labels, strict=True):
        ax.set_title(_text(label), fontsize="medium")
    figure.suptitle("Rank plots of answer indicators across runs", fontsize="medium")
    return figure


def _text(label: str) -> str:
    """A label safe for matplotlib (no mathtext) and short enough for an axis."""
    label = label if len(label) <= LABEL_WIDTH else label[: LABEL_WIDTH - 3] + "..."
    return label.replace("$", r"\$")


def _empty(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
