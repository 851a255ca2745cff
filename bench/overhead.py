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


def ms_per_round(num_particles: int, num_steps: int, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds per round (CPU time is robust to other load)."""
    wall, cpu = [], []
    for seed in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        ppl.smc(steps_program, InstantLM(), num_steps, num_particles=num_particles, seed=seed)
        wall.append((time.perf_counter() - started) / num_steps * 1000)
        cpu.append((time.process_time() - started_cpu) / num_steps * 1000)
    return statistics.median(wall), statistics.median(cpu)


@click.command()
@click.option("--steps", default=40, show_default=True, help="Rounds (steps) per program.")
@click.option("--repeats", default=5, show_default=True, help="Runs per N; the median is shown.")
def main(steps: int, repeats: int) -> None:
    click.echo(f"orchestration per SMC round, T={steps} steps, instant stub LM")
    click.echo(f"{'N':>5}  {'wall ms/round':>13}  {'cpu ms/round':>12}  {'cpu us/particle':>15}")
    for num_particles in (16, 64, 256):
        wall, cpu = ms_per_round(num_particles, steps, repeats)
        per_particle = 1000 * cpu / num_particles
        click.echo(f"{num_particles:>5}  {wall:>13.2f}  {cpu:>12.2f}  {per_particle:>15.1f}")


if __name__ == "__main__":
    main()
