"""Verifier-guided SMC against majority voting on arithmetic problems (``make demo``).

Both methods read the same program, ``examples/particle_filtering.py:solve``:
up to three lines sampled as practitioners sample (temperature 0.7, top-k
50), a calculator scoring each line. Majority voting is the unweighted vote
of independent samples (self-consistency). Verifier-guided SMC is the
particle filter of Puri et al. 2025: it resamples after every line by the
odds of the calculator's score, so particles whose arithmetic holds carry
the run, and reports the posterior's weighted vote. Each problem's SMC run
is saved with its HTML report under ``--out``.

Run: ``python examples/demo.py --problems 3 --particles 8 --out runs/demo``
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

import models
import ppl
from ppl.cli.report.rundir import save_run
from ppl.cli.tasks import arithmetic

sys.path.insert(0, str(Path(__file__).parent))
from particle_filtering import particle_filter, solve  # noqa: E402


def compare(lm, question: str, particles: int, seed: int):
    """The majority vote of independent samples and the verifier-guided SMC posterior."""
    samples = ppl.importance(solve, lm, question, num_particles=particles, seed=seed)
    return samples, particle_filter(lm, question, particles, seed)


def vote_share(posterior, answer) -> str:
    count = sum(1 for a in posterior.answers if a == answer)
    return f"{count}/{len(posterior.answers)} votes"


@click.command()
@click.option("--problems", default=3, show_default=True, help="Arithmetic problems to solve.")
@click.option("--particles", default=8, show_default=True, help="Samples / particles per method.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default="runs/demo", show_default=True, help="Directory for the reports.")
def main(problems: int, particles: int, seed: int, out: str) -> None:
    """Solve arithmetic problems twice, by majority vote and by verifier-guided SMC."""
    lm = models.default_lm()
    task = arithmetic(problems, seed=seed)
    correct = {"majority": 0, "smc": 0}
    for index, problem in enumerate(task):
        samples, guided = compare(lm, problem.question, particles, seed)
        majority = samples.majority_answer() if not samples.is_empty else None
        map_answer = guided.map_answer() if not guided.is_empty else None
        correct["majority"] += task.is_correct(problem, majority)
        correct["smc"] += task.is_correct(problem, map_answer)
        click.echo(f"\n=== {problem.question}   (reference: {problem.answers[0]})")
        click.echo(f"majority vote:        {majority!r}  ({vote_share(samples, majority)})")
        click.echo(f"verifier-guided SMC:  {map_answer!r}")
        click.echo(guided.summary())
        directory = Path(out) / f"problem_{index}"
        save_run(
            guided,
            directory,
            metadata={"program": "particle_filtering.solve", "method": "smc", "seed": seed},
            title=problem.question,
        )
        click.echo(f"report: {directory / 'report.html'}")
    click.echo(
        f"\ncorrect of {len(task)}: majority vote {correct['majority']}, "
        f"verifier-guided SMC {correct['smc']} ({particles} samples each)"
    )


if __name__ == "__main__":
    main()
