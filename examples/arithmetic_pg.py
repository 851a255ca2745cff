"""Particle Gibbs on the arithmetic word problem, with convergence diagnostics.

The program is ``arithmetic`` from ``arithmetic_steps.py``: one ``ppl.step``
per line, a calculator (``ppl.memo``) checking every ``a op b = c`` and a
``ppl.factor`` penalising wrong ones. SMC alone tends to end with most
particles descending from one early line. Particle Gibbs instead runs chains:
each iteration is an SMC sweep conditioned on the chain's current solution
(kept in one slot), and the solution drawn from the sweep's final particles
is the chain's next sample. Several chains give R-hat and effective sample
sizes for each answer; the update rate per line shows how often the sweeps
replaced that line (rates near zero for early lines: more particles needed).

Run: ``python examples/arithmetic_pg.py --particles 4 --iterations 8 --chains 4``
"""

from __future__ import annotations

import math

import click
from arithmetic_steps import QUESTION, arithmetic

import ppl
from inference.mcmc import chain_diagnostics


def report(posterior: ppl.Posterior) -> str:
    """The chains' answers with MCSE, R-hat and ESS, and the update rate of each line.

    Example (``posterior`` from ``ppl.particle_gibbs`` on ``arithmetic`` with the embedded
    model: minutes of decoding, so not run as a test):
        >>> print(report(posterior))  # doctest: +SKIP
    """
    rows = [f"{'answer':<12}  {'prob':>6}  {'mcse':>6}  {'R-hat':>6}  {'ESS':>7}"]
    for answer, stats in chain_diagnostics(posterior).items():
        rhat, ess = stats["rhat"], stats["ess"]
        rows.append(
            f"{answer!r:<12}  {stats['probability']:>6.3f}  {stats['mcse']:>6.3f}  "
            f"{'n/a' if math.isnan(rhat) else f'{rhat:.3f}':>6}  "
            f"{'n/a' if math.isnan(ess) else f'{ess:.1f}':>7}"
        )
    rates = "  ".join(f"{rate:.2f}" for rate in posterior.info["update_rate"])
    rows.append(f"\nupdate rate per line  {rates}")
    return "\n".join(rows)


@click.command()
@click.option("--particles", default=4, show_default=True, help="Particles per sweep.")
@click.option("--iterations", default=8, show_default=True, help="Sweeps per chain.")
@click.option("--burn-in", default=2, show_default=True, help="Sweeps discarded per chain.")
@click.option("--chains", default=4, show_default=True, help="Independent chains (for R-hat).")
@click.option("--max-lines", default=4, show_default=True, help="Lines per solution.")
@click.option("--seed", default=0, show_default=True)
def main(
    particles: int, iterations: int, burn_in: int, chains: int, max_lines: int, seed: int
) -> None:
    """Sample solutions with particle Gibbs on the embedded model and print the diagnostics."""
    import models

    lm = models.default_lm()
    posterior = ppl.particle_gibbs(
        arithmetic,
        lm,
        QUESTION,
        max_lines,
        num_particles=particles,
        num_iterations=iterations,
        num_chains=chains,
        burn_in=burn_in,
        seed=seed,
    )
    click.echo(f"Question: {QUESTION}\n")
    click.echo(posterior.summary())
    click.echo("\n" + report(posterior))
    click.echo("\nLast solution of chain 0:")
    last = max(i for i in range(posterior.num_particles) if posterior.run_index[i] == 0)
    click.echo("".join(s.value for s in posterior.particles[last].steps))


if __name__ == "__main__":
    main()
