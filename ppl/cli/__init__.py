"""The application: the ``ppl`` command and what only it needs.

Recipes and loading by name (``recipes``, ``loading``), dataset runs and
their executors (``datasets``, ``executors``, ``store``), run directories and
HTML reports (``report``), the benchmark harness and its task suites
(``bench``, ``tasks``) and ``ppl calibrate`` (``calibrate``). Nothing in the
core (``ppl``), the engines (``inference``) or the backends (``models``)
imports this package.
"""

import warnings

# The application's own output stays readable: ArviZ announces an upcoming
# refactor once a day as a FutureWarning that says nothing about this run.
# Library code leaves warnings alone; only the application entry filters it.
warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)


def __getattr__(name: str):
    # `ppl.cli:main` is the console script; importing the package alone loads no command.
    if name == "main":
        from ppl.cli.app import main

        return main
    raise AttributeError(f"module 'ppl.cli' has no attribute {name!r}")
