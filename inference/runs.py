"""Independent runs of any engine, pooled into one posterior."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from inference.population import check_positive_int
from ppl.posterior import Posterior


def run(
    method: str | Callable,
    program: Callable,
    *args,
    num_runs: int,
    seed: int | None = None,
    **kwargs,
) -> Posterior:
    """Run ``method`` ``num_runs`` times with independent seeds and pool the runs.

    The pooled posterior weights each run by its evidence estimate (see
    ``Posterior.combine``), keeps ``run_index`` for R-hat across runs, and
    estimates ``log_evidence`` with a standard error from the spread of runs.

    Example:
        >>> post = ppl.run("smc", program, lm, "a", num_runs=4, num_particles=8, seed=0)
        >>> post.num_runs, post.num_particles, math.isfinite(post.log_evidence)
        (4, 32, True)
    """
    num_runs = check_positive_int("num_runs", num_runs)
    if isinstance(method, str):
        from inference.registry import get_engine  # the registry imports every engine

        method = get_engine(method).fn
    seeds = np.random.SeedSequence(seed).spawn(num_runs)
    posteriors = [
        method(program, *args, seed=int(s.generate_state(1, np.uint64)[0]), **kwargs) for s in seeds
    ]
    pooled = Posterior.combine(posteriors)
    pooled.info["seed"] = seed
    return pooled
