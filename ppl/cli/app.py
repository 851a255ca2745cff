"""The ``ppl`` command: run reasoning programs, render their reports, benchmark, calibrate.

Exit status: 0 on success, 1 when the run fails (the reason is one line on
stderr, or a JSON object with ``--json``), 2 for command-line usage errors.
"""

from __future__ import annotations

import click

from ppl.cli.bench.command import bench
from ppl.cli.calibrate import calibrate
from ppl.cli.output import Output, output_options
from ppl.cli.report import rundir
from ppl.cli.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pplscale", prog_name="ppl")
def main() -> None:
    """pplscale: run reasoning programs over language models and report how sure they are.

    A program is a Python function whose first argument is the LM, as in
    def solve(lm, question). "ppl run" runs an inference method on it and
    writes result.json, posterior.nc (ArviZ), genealogy.graphml and a
    self-contained report.html; "ppl report" re-renders the report of a saved
    run; "ppl bench" measures accuracy against compute for several methods on
    a task suite; "ppl calibrate" turns dataset runs into calibrated decisions
    (answer sets, abstention, sample budgets) that "ppl run --calibration"
    applies. See "ppl COMMAND --help".
    """


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Where to write the report. [default: DIRECTORY/report.html]",
)
@output_options
def report(directory: str, out: str | None, output: Output) -> None:
    """Render DIRECTORY/report.html from a saved run (or dataset run) of `ppl run`.

    The page is self-contained (figures embedded): a summary table, warnings,
    answers with intervals, per-run diagnostics, and plots of the answers,
    ESS per step, weights, ranks across runs and the particle genealogy.
    """
    result = rundir.read_result(directory)
    if result.get("kind") == "dataset":
        path = rundir.write_dataset_report(directory, result, out)
        warnings = [
            f"problem {r['index']}: {r['warnings']} warning(s)"
            for r in result["problems"]
            if r["warnings"]
        ]
    else:
        path = rundir.write_run_report(directory, out)
        warnings = result["diagnostics"]["warnings"]
        for warning in warnings:
            output.info(f"warning: {warning}")
    output.info(f"wrote {path}")
    output.result({"report": str(path), "warnings": warnings})


main.add_command(run)
main.add_command(bench)
main.add_command(calibrate)

if __name__ == "__main__":
    main()
