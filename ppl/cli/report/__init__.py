"""Run directories and their reports: what ``ppl run`` writes and ``ppl report`` renders.

``rundir`` saves and reads run directories, ``html`` renders the
self-contained report page, ``plots`` draws its figures and ``genealogy``
exports the particle genealogy. The numbers in a report come from the core
(``ppl.diagnostics``).

Example:
    >>> from ppl.cli.report import load_runs, save_run
    >>> save_run(post, "runs/demo", metadata={"program": "demo"})   # doctest: +SKIP
    >>> data = load_runs("runs/cal")                                # doctest: +SKIP
"""

from ppl.cli.report.rundir import SavedRun, load_run, load_runs, save_run, write_run_report

__all__ = ["SavedRun", "load_run", "load_runs", "save_run", "write_run_report"]
