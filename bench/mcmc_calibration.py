"""Are an MCMC engine's answer probabilities and MCSEs right? Many seeds against enumeration.

Runs the engine on the branching toy of ``tests/inference/test_mcmc.py`` (its
exact posterior is enumerated) once per seed, in ``--workers`` processes, and
prints for each answer with probability >= 0.03:

- ``bias z``: the mean estimate over seeds minus the exact probability, in
  standard errors of that mean (from the spread over seeds): |z| < 2 is
  within noise;
- ``sd/mcse``: the spread of the estimates over seeds against the root mean
  square of the runs' own MCSE (1.0 when the MCSE is calibrated);

and the share of seeds where some answer is more than 3 MCSE from exact,
which is how often one seed of the exactness test fails.

Run: ``OMP_NUM_THREADS=1 python bench/mcmc_calibration.py --seeds 40``
"""

from __future__ import annotations

import sys
from multiprocessing import Pool
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(ROOT),
    *(str(ROOT / "tests" / p) for p in ("", "inference", "ppl", "models", "cli")),
]

from test_mcmc import branching, exact_branching  # noqa: E402

import ppl  # noqa: E402
from inference.mcmc import chain_diagnostics  # noqa: E402

ENGINES = {
    # The settings of the exactness tests in tests/inference/test_mcmc.py.
    "parallel_tempering": dict(num_steps=2500, burn_in=200, num_chains=6, betas=(1.0, 0.4, 0.1)),
    "mh": dict(num_steps=4000, burn_in=200, num_chains=8),
}
MIN_P = 0.03


def estimates(engine: str, seed: int) -> dict:
    """Each tested answer's (probability, MCSE) in one run."""
    posterior = getattr(ppl, engine)(branching, seed=seed, **ENGINES[engine])
    stats = chain_diagnostics(posterior)
    return {
        a: (stats[a]["probability"], stats[a]["mcse"]) if a in stats else (0.0, 0.0)
        for a in tested_answers()
    }


def tested_answers() -> dict:
    return {a: p for a, p in exact_branching().items() if p >= MIN_P}


def summarize(runs: list[dict]) -> None:
    exact = tested_answers()
    print(f"{'answer':>8} {'exact':>7} {'mean':>7} {'bias z':>7} {'sd/mcse':>8}")
    worst = np.zeros(len(runs))
    for answer, p in sorted(exact.items(), key=lambda item: -item[1]):
        est = np.array([run[answer][0] for run in runs])
        mcse = np.array([run[answer][1] for run in runs])
        spread = est.std(ddof=1)
        bias_z = (est.mean() - p) / (spread / np.sqrt(len(runs)))
        ratio = spread / np.sqrt(np.mean(mcse**2))
        worst = np.maximum(worst, np.abs(est - p) / mcse)
        print(f"{answer!s:>8} {p:7.4f} {est.mean():7.4f} {bias_z:+7.2f} {ratio:8.2f}")
    print(f"seeds with an answer beyond 3 MCSE: {int((worst > 3).sum())} of {len(runs)}")


@click.command()
@click.option("--engine", type=click.Choice(sorted(ENGINES)), default="parallel_tempering")
@click.option("--seeds", type=int, default=40, show_default=True, help="Seeds 1..N.")
@click.option("--workers", type=int, default=2, show_default=True)
def main(engine: str, seeds: int, workers: int) -> None:
    with Pool(workers) as pool:
        runs = pool.starmap(estimates, [(engine, seed) for seed in range(1, seeds + 1)])
    print(f"{engine}, {seeds} seeds, settings {ENGINES[engine]}")
    summarize(runs)


if __name__ == "__main__":
    main()
