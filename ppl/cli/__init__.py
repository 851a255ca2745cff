"""The application: the ``ppl`` command and what only it needs.

Recipes and loading by name (``recipes``, ``loading``), dataset runs and
their executors (``datasets``, ``executors``, ``store``), run directories and
HTML reports (``report``), the benchmark harness and its task suites
(``bench``, ``tasks``) and ``ppl calibrate`` (``calibrate``). Nothing in the
core (``ppl``), the engines (``inference``) or the backends (``models``)
imports this package.
"""


def __getattr__(name: str):
    # `ppl.cli:main` is the console script; importing the package alone loads no command.
    if name == "main":
        from ppl.cli.app import main

        return main
    raise AttributeError(f"module 'ppl.cli' has no attribute {name!r}")
