"""Run directories and their reports: what ``ppl run`` writes and ``ppl report`` renders.

``rundir`` saves and reads run directories, ``html`` renders the
self-contained report page, ``plots`` draws its figures and ``genealogy``
exports the particle genealogy. The numbers in a report come from the core
(``ppl.diagnostics``).

Example:
    >>> from ppl.cli.report import load_run, load_runs, save_run
    >>> diagnostics = save_run(post, "runs/two_letters", metadata={"program": "two_letters"})
    >>> load_run("runs/two_letters").posterior.map_answer()
    'ca'
    >>> len(load_runs("runs/cal"))  # the problems of a `ppl run --dataset` directory
    12
"""

from ppl.cli.report.rundir import SavedRun, load_run, load_runs, save_run, write_run_report

__all__ = ["SavedRun", "load_run", "load_runs", "save_run", "write_run_report"]
