"""Self-contained HTML reports: one file, inline CSS, figures embedded as base64 PNG.

The page needs nothing but itself: no scripts, no network, no sibling files
(links to the run's other files are plain relative links).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ppl.cli.report import plots
from ppl.diagnostics import Diagnostics, format_number
from ppl.posterior import Posterior

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222;
       padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { font-family: ui-monospace, monospace; white-space: pre-wrap; max-width: 40em; }
ul.warnings li { color: #8a1f11; }
p.ok { color: #1b6b2f; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def run_report(
    posterior: Posterior,
    diagnostics: Diagnostics,
    *,
    title: str,
    metadata: Mapping[str, Any],
    files: Iterable[str] = (),
    idata=None,
    calibration: Mapping[str, Any] | None = None,
) -> str:
    """The HTML report of one run: summary table, warnings, answers, runs, figures.

    ``metadata`` is shown as a table (program, method, model...); ``files``
    are linked relative to the report; ``idata`` (``to_inference_data``)
    enables the rank plot when there are several runs; ``calibration`` (a
    ``Decision.to_dict()``) adds the calibrated decision and its guarantee.

    Example:
        >>> from ppl.diagnostics import diagnose
        >>> page = run_report(post, diagnose(post), title="two letters", metadata={})
        >>> page.startswith("<!DOCTYPE html>"), "two letters" in page
        (True, True)
    """
    d = diagnostics
    parts = [
        _head(title),
        f"<h1>{_esc(title)}</h1>",
        _warnings(d.warnings),
        "<h2>Summary</h2>",
        _table(["quantity", "value"], [[_cell(k), _cell(v)] for k, v in _summary(d)], "summary"),
        *_decision(calibration),
        "<h2>Answers</h2>",
        _answers_table(d),
        "<h2>Runs</h2>",
        _runs_table(d),
    ]
    if d.rhat:
        parts += ["<h2>Agreement across runs</h2>", _rhat_table(d)]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(figure, caption) for figure, caption in _figures(posterior, d, idata)]
    parts += _notes(d.notes)
    parts += _metadata(metadata, files)
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _summary(d: Diagnostics) -> list[tuple[str, str]]:
    """The summary table's rows: the MAP answer, ESS, Pareto k, R-hat, evidence, cost."""
    best = d.answers[0] if d.answers else None
    c = d.cost
    return [
        ("MAP answer", best.label if best else "none (empty posterior)"),
        (
            "P(MAP answer)",
            f"{best.probability:.3f}  [{best.lower:.3f}, {best.upper:.3f}] "
            f"({d.level:.0%}, {d.interval_method})"
            if best
            else "n/a",
        ),
        ("distinct answers", str(len(d.answers))),
        ("method", f"{d.method}: {d.num_runs} run(s), {d.num_particles} particles in all"),
        ("final ESS", f"{d.ess:.2f}"),
        ("Pareto k (max over runs)", format_number(d.pareto_k)),
        ("R-hat (max over answers)", format_number(d.max_rhat)),
        (
            "log evidence",
            f"{format_number(d.log_evidence)} +/- {format_number(d.log_evidence_se)}",
        ),
        ("resampling events", str(d.num_resamplings)),
        (
            "tokens",
            f"{c.tokens_generated} generated, {c.tokens_prefilled} prefilled, "
            f"{c.tokens_scored} scored",
        ),
        ("calls", f"{c.lm_calls} LM, {c.verifier_calls} verifier"),
        ("wall time", f"{c.wall_seconds:.2f} s"),
    ]


def _answers_table(d: Diagnostics) -> str:
    answer_rows = [
        [
            _cell(a.label, "text"),
            _cell(f"{a.probability:.4f}", "num"),
            _cell(f"[{a.lower:.4f}, {a.upper:.4f}]", "num"),
            _cell(str(a.count), "num"),
        ]
        + (
            [_cell(" ".join(f"{p:.2f}" for p in a.run_probabilities), "num")]
            if d.num_runs > 1
            else []
        )
        for a in d.answers
    ]
    answer_header = ["answer", "probability", f"{d.level:.0%} interval", "particles"]
    if d.num_runs > 1:
        answer_header.append("per run")
    return _table(answer_header, answer_rows, "answers")


def _runs_table(d: Diagnostics) -> str:
    run_rows = [
        [
            _cell(str(r.run), "num"),
            _cell(str(r.num_particles), "num"),
            _cell(format_number(r.log_evidence), "num"),
            _cell(f"{r.ess:.2f}", "num"),
            _cell(format_number(r.pareto_k), "num"),
            _cell(str(len(r.resampled_after)), "num"),
        ]
        for r in d.runs
    ]
    return _table(
        ["run", "particles", "log evidence", "final ESS", "Pareto k", "resamplings"],
        run_rows,
        "runs",
    )


def _rhat_table(d: Diagnostics) -> str:
    rhat_rows = [
        [
            _cell(label, "text"),
            _cell(format_number(value), "num"),
            _cell(format_number(d.ess_across_runs.get(label, math.nan), 1), "num"),
        ]
        for label, value in d.rhat.items()
    ]

    return _table(["answer", "R-hat", "ESS across runs"], rhat_rows, "rhat")


def _figures(posterior: Posterior, d: Diagnostics, idata) -> list[tuple]:
    """The report's figures and their captions; the rank plot needs ``idata`` and two runs."""
    figures = [
        (
            plots.answers_figure(d),
            "Posterior over answers: bars are the pooled probability, "
            "whiskers the interval, dots single runs.",
        ),
        (plots.ess_figure(d), "ESS after each step; crosses mark resampling."),
        (plots.weights_figure(posterior, d), "Final importance weights and their right tail."),
    ]
    if idata is not None and d.rhat:
        figures.append(
            (
                plots.rank_figure(idata, list(d.rhat)),
                "Rank plots across runs: flat, similar bars for every run mean the runs agree.",
            )
        )
    figures.append(
        (plots.genealogy_figure(posterior.genealogy), "Particle genealogy (first 4 runs).")
    )

    return figures


def dataset_report(
    rows: list[Mapping[str, Any]],
    *,
    title: str,
    metadata: Mapping[str, Any],
    total: int,
    calibration: Mapping[str, Any] | None = None,
) -> str:
    """The HTML report of a dataset run: one row per finished problem.

    Each row has ``index``, ``input``, ``answer`` (MAP label), ``probability``,
    ``lower``, ``upper``, ``expected`` (or None), ``correct`` (or None),
    ``ess``, ``pareto_k``, ``max_rhat``, ``warnings`` (count) and ``link``,
    and ``calibration`` when a calibration was applied; ``calibration``
    (``rundir.calibration_summary``) then adds how the decisions did.

    Example:
        >>> from ppl.cli.report.rundir import read_result
        >>> rows = read_result("runs/cal")["problems"]  # a `ppl run --dataset` directory
        >>> page = dataset_report(rows, title="add", metadata={}, total=len(rows))
        >>> page.startswith("<!DOCTYPE html>"), "add" in page
        (True, True)
    """
    judged = [r for r in rows if r["correct"] is not None]
    accuracy = (
        f"{sum(r['correct'] for r in judged) / len(judged):.3f} "
        f"({sum(r['correct'] for r in judged)}/{len(judged)}, exact match)"
        if judged
        else "n/a (no expected answers)"
    )
    summary = [
        ("problems finished", f"{len(rows)} of {total}"),
        ("accuracy of MAP answers", accuracy),
        ("problems with warnings", str(sum(1 for r in rows if r["warnings"]))),
    ]
    problem_rows = [
        [
            _cell(f'<a href="{_esc(r["link"])}">{r["index"]}</a>', "num", raw=True),
            _cell(_shorten(r["input"]), "text"),
            _cell(r["answer"] or "none", "text"),
            _cell(
                f"{r['probability']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]"
                if r["answer"] is not None
                else "n/a",
                "num",
            ),
            _cell("" if r["expected"] is None else str(r["expected"]), "text"),
            _cell({True: "yes", False: "no", None: ""}[r["correct"]]),
            _cell(_number(r["ess"], 1), "num"),
            _cell(_number(r["pareto_k"]), "num"),
            _cell(_number(r["max_rhat"]), "num"),
            _cell(str(r["warnings"]), "num"),
        ]
        + ([_cell(_calibrated_cell(r.get("calibration")), "text")] if calibration else [])
        for r in rows
    ]
    parts = [
        _head(title),
        f"<h1>{_esc(title)}</h1>",
        "<h2>Summary</h2>",
        _table(["quantity", "value"], [[_cell(k), _cell(v)] for k, v in summary], "summary"),
        *_calibration_summary(calibration),
        "<h2>Problems</h2>",
        _table(
            [
                "#",
                "input",
                "MAP answer",
                "probability [interval]",
                "expected",
                "match",
                "ESS",
                "Pareto k",
                "R-hat",
                "warnings",
            ]
            + (["calibrated decision"] if calibration else []),
            problem_rows,
            "problems",
        ),
        *_metadata(metadata, ()),
        "</body>\n</html>\n",
    ]
    return "\n".join(parts)


def _decision(decision: Mapping[str, Any] | None) -> list[str]:
    """The calibrated decision of one run: headline, numbers, guarantee, notes."""
    if not decision:
        return []
    rows = [[_cell(str(k)), _cell(_value(v))] for k, v in decision["details"].items()]
    notes = "".join(f"<li>{_esc(n)}</li>" for n in decision["notes"])
    return [
        '<section id="calibration"><h2>Calibrated decision</h2>',
        f'<p class="decision"><strong>{_esc(decision["headline"])}</strong></p>',
        f'<p class="guarantee">Guarantee: {_esc(decision["guarantee"])}</p>',
        _table(["quantity", "value"], rows, "calibration-details"),
        f'<ul class="warnings">{notes}</ul>' if notes else "",
        "</section>",
    ]


def _calibration_summary(summary: Mapping[str, Any] | None) -> list[str]:
    """How a dataset run's calibrated decisions did against the expected answers."""
    if not summary:
        return []
    names = {
        "coverage": "coverage (set holds an expected answer)",
        "mean_set_size": "mean set size",
        "empty_rate": "empty-set rate",
        "answer_rate": "answer rate",
        "answered": "answered and judged",
        "risk": "error rate among answered",
        "miss_rate": "miss rate (no expected answer found)",
        "mean_samples": "mean samples drawn",
    }
    rows = [
        [_cell("method"), _cell(summary["method"])],
        [_cell("problems (judged)"), _cell(f"{summary['problems']} ({summary['judged']})")],
    ]
    rows += [[_cell(names[k]), _cell(_value(summary[k]))] for k in names if k in summary]
    return [
        '<section id="calibration"><h2>Calibrated decisions</h2>',
        f'<p class="guarantee">Guarantee: {_esc(summary["guarantee"])}</p>',
        _table(["quantity", "value"], rows, "calibration-summary"),
        "</section>",
    ]


def _calibrated_cell(row: Mapping[str, Any] | None) -> str:
    if not row:
        return ""
    mark = {True: " (holds expected)", False: " (misses expected)", None: ""}
    return row["headline"] + mark[row["contains_expected"]]


def _value(value: Any) -> str:
    if value is None:
        return "n/a"
    return format_number(value) if isinstance(value, float) else str(value)


def _head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>"
    )


def _warnings(warnings: list[str]) -> str:
    if not warnings:
        return '<section id="warnings"><p class="ok">No warnings.</p></section>'
    items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    return f'<section id="warnings"><h2>Warnings</h2><ul class="warnings">{items}</ul></section>'


def _notes(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"]


def _metadata(metadata: Mapping[str, Any], files: Iterable[str]) -> list[str]:
    parts = [
        "<h2>Run</h2>",
        _table(
            ["setting", "value"],
            [
                [_cell(str(k)), _cell(_shorten(str(v), 400), "text")]
                for k, v in metadata.items()
                if v is not None
            ],
            "metadata",
        ),
    ]
    links = [f'<a href="{_esc(f)}">{_esc(f)}</a>' for f in files]
    if links:
        parts.append("<p>Files: " + ", ".join(links) + "</p>")
    return parts


def _figure(figure, caption: str) -> str:
    data = base64.b64encode(plots.png_bytes(figure)).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(content: str, css: str = "", *, raw: bool = False) -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<td{attribute}>{content if raw else _esc(content)}</td>"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else format_number(float(value), digits)
