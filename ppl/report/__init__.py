"""Uncertainty reports: diagnostics, ArviZ export, genealogy export, plots, HTML.

Example:
    >>> from ppl.report import diagnose, save_run
    >>> report = diagnose(post)                                     # doctest: +SKIP
    >>> print(report.text())                                        # doctest: +SKIP
    >>> save_run(post, "runs/demo", metadata={"program": "demo"})   # doctest: +SKIP
"""

from ppl.report.diagnostics import (
    AnswerEstimate,
    Diagnostics,
    RunDiagnostics,
    across_runs,
    bootstrap_intervals,
    diagnose,
    dirichlet_intervals,
    pareto_k,
)
from ppl.report.genealogy import to_json as genealogy_to_json
from ppl.report.genealogy import write_graphml as write_genealogy_graphml
from ppl.report.genealogy import write_json as write_genealogy_json
from ppl.report.inference_data import to_inference_data
from ppl.report.rundir import SavedRun, load_run, save_run, write_run_report

__all__ = [
    "AnswerEstimate",
    "Diagnostics",
    "RunDiagnostics",
    "SavedRun",
    "across_runs",
    "bootstrap_intervals",
    "diagnose",
    "dirichlet_intervals",
    "genealogy_to_json",
    "load_run",
    "pareto_k",
    "save_run",
    "to_inference_data",
    "write_genealogy_graphml",
    "write_genealogy_json",
    "write_run_report",
]
