"""Orchestration cost per SMC round, with the language model replaced by an instant stub.

Everything but the model runs for real: re-executing each particle's program
under the replay handlers, batching requests, weighting, resampling. The stub
returns a fixed one-token step, so the time measured is pplscale's own.

Run: ``python bench/overhead.py``  (prints the median ms per round for each N)
"""

from __future__ import annotations

import statistics
import time

import click

import ppl


class InstantLM(ppl.LM):
    """Answers every request at once with a fixed step; no model, no tokenizer."""

    def __init__(self):
        self.stats = ppl.lm.LMStats()

    def sample_steps(self, requests, *, seed=None):
        self.stats.sample_calls += 1
        return [ppl.StepResult(" a", (1,), -1.0, -1.0, False) for _ in requests]

    def score_steps(self, requests):
        return [-1.0 for _ in requests]


@ppl.program
def steps_program(lm, num_steps: int):
    text = "Q:"
    for i in range(num_steps):
        step = ppl.step(f"step_{i}", lm, text, stop=(), max_tokens=1)
        ppl.factor(f"score_{i}", -0.01 * len(step))
        text += step
    ppl.answer(len(text))


def ms_per_round(num_particles: int, num_steps: int, repeats: int) -> float:
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        ppl.smc(steps_program, InstantLM(), num_steps, num_particles=num_particles, seed=seed)
        times.append((time.perf_counter() - started) / num_steps * 1000)
    return statistics.median(times)


@click.command()
@click.option("--steps", default=40, show_default=True, help="Rounds (steps) per program.")
@click.option("--repeats", default=5, show_default=True, help="Runs per N; the median is shown.")
def main(steps: int, repeats: int) -> None:
    click.echo(f"orchestration per SMC round, T={steps} steps, instant stub LM")
    click.echo(f"{'N':>5}  {'ms/round':>9}  {'us/particle/round':>18}")
    for num_particles in (16, 64, 256):
        ms = ms_per_round(num_particles, steps, repeats)
        click.echo(f"{num_particles:>5}  {ms:>9.2f}  {1000 * ms / num_particles:>18.1f}")


if __name__ == "__main__":
    main()
