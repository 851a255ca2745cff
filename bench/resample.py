"""Cost of one resampling event against one decode step, on the embedded model.

A resampling event, as the backend sees it: the next batched call matches
each particle's context to the cached row of its ancestor (vectorized prefix
match) and forks the cache by one ``index_select`` per layer, plus the mask
and position bookkeeping. Nothing is recomputed. The script builds a
population of N particles with a prompt and 64 generated tokens each,
resamples it with duplicates (systematic resampling of random weights), and
times that reindexing against one batched decode step of the same N rows.
Compaction, which runs when holes waste half the cache, is timed too.

Run: ``python bench/resample.py``
"""

from __future__ import annotations

import statistics
import time

import click
import numpy as np
import torch

import models
import ppl
from inference.resampling import get_resampler

PROMPT = "Write a short story about a fox who finds a key.\n\nOnce upon a time"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def measure(lm, num_particles: int, repeats: int) -> tuple[float, float, float]:
    lm._batch = None
    requests = [ppl.StepRequest(PROMPT, stop=(), max_tokens=64)] * num_particles
    results = lm.sample_steps(requests, seed=0)
    rng = np.random.default_rng(0)
    log_weights = rng.normal(scale=2.0, size=num_particles)
    weights = np.exp(log_weights - log_weights.max())
    ancestors = get_resampler("systematic")(weights / weights.sum(), rng)
    # Each resampled particle asks to continue its ancestor's full sequence.
    sequences = [lm.encode(PROMPT) + results[a].token_ids for a in ancestors]
    counts = [1] * num_particles

    def reindex():
        sources, lengths = lm._match(sequences, counts)
        lm._batch = lm._rows_for(list(zip(sources, lengths, strict=True)))[0]

    def decode():
        lm._decode([results[j].token_ids[-1] for j in range(num_particles)])

    def compact():
        lm._batch.select(range(num_particles)).compact()

    return (
        median_seconds(reindex, repeats),
        median_seconds(decode, repeats),
        median_seconds(compact, repeats),
    )


@click.command()
@click.option("--particles", "particle_counts", default="16,64", show_default=True)
@click.option("--repeats", default=7, show_default=True, help="Timings per figure; medians.")
def main(particle_counts: str, repeats: int) -> None:
    lm = models.default_lm()
    click.echo(f"one resampling event vs one decode step, embedded model, median of {repeats}")
    click.echo(
        f"{'N':>4} {'reindex ms':>10} {'decode ms':>10} {'ratio':>6} "
        f"{'compact ms':>10} {'compact/decode':>14}"
    )
    for num_particles in (int(n) for n in particle_counts.split(",")):
        reindex, decode, compact = measure(lm, num_particles, repeats)
        click.echo(
            f"{num_particles:>4} {1000 * reindex:>10.2f} {1000 * decode:>10.2f} "
            f"{reindex / decode:>6.3f} {1000 * compact:>10.2f} {compact / decode:>14.3f}"
        )


if __name__ == "__main__":
    main()
