"""``ppl bench``: accuracy against compute for inference methods on a task suite.

Every (engine, budget, seed, problem) run is saved to ``DIR/runs/`` as soon
as it finishes (a ``ppl.cli.store.RunStore``), so an interrupted benchmark
continues where it stopped: a rerun of the same command skips finished runs. Methods
that read the same engine run share it (``importance``, ``majority``,
``best_of_n`` and ``weighted_majority`` all read one importance run).
Importance and SMC runs of one budget and seed on many problems share one
running batch of ``--rows`` rows (``inference.population.run_problems``),
each with the answers and its own cost it gets alone.
When every run is done, ``results.csv``, ``results.json`` and
``accuracy.png`` summarize accuracy with 95% intervals against the budget
and against tokens generated per problem.

The program is called as ``program(lm, question)``; its ``ppl.answer`` is
judged by the task (see ``ppl.cli.tasks``).

Modules: ``engines`` (one engine run and the methods' predictions from it),
``summary`` (accuracy tables and scaling-law fits), ``plots`` (their
figures) and ``command`` (the click command).
"""
