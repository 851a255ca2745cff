"""Importance and SMC generation throughput against a raw batched decode loop of the same model.

For each engine and N, one run of a T-step program (steps of up to 32 tokens,
ending at a sentence end) and one raw loop run back to back: the raw loop
prefills the prompt once, expands its cache to N rows and decodes, sampling
every token with the same sampler, for as many tokens per row as the engine
generated per particle. Both include their prefill. The ratio is engine
tokens/s over raw tokens/s, the median over repeats; 1.0 means particle
methods cost nothing beyond the decoding itself. ``idle rows`` is the share
of rows fed in decode passes whose step had already ended; ``passes/token``
is forward passes per token a particle generated (1.0: no pass was wasted
waiting for another particle's step).

Run: ``python bench/throughput.py``  (embedded model; ``--repeats``, ``--steps``)
"""

from __future__ import annotations

import statistics
import time

import click
import torch
from transformers import DynamicCache

import models
import ppl
from inference.population import Problem, run_problems
from models.token_lm import sample_categorical
from models.transformers_lm import cache_keyword

PROMPT = "Write a short story about a fox who finds a key.\n\nOnce upon a time"


@ppl.program
def story(lm, prompt: str, num_steps: int, step_tokens: int, stop=(".", "\n")):
    text = prompt
    for t in range(num_steps):
        sentence = ppl.step(f"sentence_{t}", lm, text, stop=stop, max_tokens=step_tokens)
        # A mild preference for shorter sentences, so SMC resamples now and then.
        ppl.factor(f"brevity_{t}", -0.02 * len(sentence))
        text += sentence
        if sentence.finished:
            break
    ppl.answer(text[len(prompt) :])


@torch.inference_mode()
def raw_decode(lm, prompt_ids: list[int], num_rows: int, num_tokens: int, seed: int) -> float:
    """Seconds for a plain KV-cached batched decode loop: prefill once, expand, decode."""
    model = lm.model
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=torch.tensor([prompt_ids]), **{cache_keyword(model): cache}, use_cache=True
    )
    cache.batch_repeat_interleave(num_rows)
    logits = out.logits[:, -1, :].expand(num_rows, -1)
    for _ in range(num_tokens):
        uniforms = torch.rand(num_rows, generator=generator)
        tokens = sample_categorical(torch.log_softmax(logits.float(), -1), uniforms)
        out = model(input_ids=tokens[:, None], **{cache_keyword(model): cache}, use_cache=True)
        logits = out.logits[:, -1, :]
    return time.perf_counter() - started


def engine_run(lm, method: str, num_particles: int, num_steps: int, step_tokens: int, stop, seed):
    before = lm.stats.snapshot()
    lm._running_batch().reset()  # start from an empty cache, as the raw loop does
    started = time.perf_counter()
    posterior = getattr(ppl, method)(
        story, lm, PROMPT, num_steps, step_tokens, stop, num_particles=num_particles, seed=seed
    )
    seconds = time.perf_counter() - started
    after = lm.stats.snapshot()
    delta = {key: after[key] - before[key] for key in after}
    return seconds, delta, posterior


@click.command()
@click.option("--methods", default="importance,smc", show_default=True)
@click.option("--particles", "particle_counts", default="16,64", show_default=True)
@click.option("--steps", default=6, show_default=True, help="Steps (sentences) per program.")
@click.option("--step-tokens", default=32, show_default=True, help="Token limit per step.")
@click.option("--repeats", default=3, show_default=True, help="Runs per N; medians shown.")
@click.option("--problems", default=16, show_default=True, help="Problems packed in one batch.")
@click.option("--rows", default=64, show_default=True, help="Rows of the packed batch.")
@click.option("--threads", default=0, help="torch threads (0: torch's default).")
@click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True
)
def main(
    methods: str,
    particle_counts: str,
    steps: int,
    step_tokens: int,
    repeats: int,
    problems: int,
    rows: int,
    threads: int,
    dtype: str,
):
    if threads:
        torch.set_num_threads(threads)
    lm = models.default_lm(dtype=getattr(torch, dtype))
    prompt_ids = list(lm.encode(PROMPT))
    click.echo(
        f"Engines vs raw batched decoding, embedded model ({dtype}), {steps} steps of "
        f"<= {step_tokens} tokens, {torch.get_num_threads()} threads, median of {repeats}"
    )
    # Ragged steps end at a sentence end, so particles reach the end of a step
    # at different passes; fixed steps all run to the token limit.
    if problems:
        packed(lm, prompt_ids, problems, rows, steps, step_tokens)
    for label, stop in (("ragged steps (stop at '.' or newline)", (".", "\n")), ("fixed", ())):
        click.echo(f"\n{label}")
        click.echo(
            f"{'method':>10} {'N':>4} {'tokens/particle':>15} {'tok/s':>8} {'raw tok/s':>10} "
            f"{'ratio':>6} {'idle rows':>9} {'passes/token':>12} {'resampled':>9}"
        )
        for method in methods.split(","):
            for num_particles in (int(n) for n in particle_counts.split(",")):
                row = measure(
                    lm, method, prompt_ids, num_particles, steps, step_tokens, stop, repeats
                )
                click.echo(
                    f"{method:>10} {num_particles:>4} {row['tokens']:>15.0f} {row['rate']:>8.1f} "
                    f"{row['raw']:>10.1f} {row['ratio']:>6.2f} {row['idle']:>9.1%} "
                    f"{row['passes']:>12.2f} {row['resampled']:>9.0f}"
                )


def packed(lm, prompt_ids, num_problems: int, rows: int, steps: int, step_tokens: int) -> None:
    """SMC on many problems packed into one running batch of ``rows`` rows, against raw decode."""
    num_particles = 16
    problems = [
        Problem(story, (lm, PROMPT, steps, step_tokens), seed=k) for k in range(num_problems)
    ]
    before = lm.stats.snapshot()
    lm._running_batch().reset()
    started = time.perf_counter()
    run_problems("smc", problems, num_particles=num_particles, max_rows=rows)
    seconds = time.perf_counter() - started
    after = lm.stats.snapshot()
    generated = after["tokens_generated"] - before["tokens_generated"]
    idle = (after["idle_rows"] - before["idle_rows"]) / max(
        1, after["decode_rows"] - before["decode_rows"]
    )
    tokens_per_row = max(1, round(generated / rows))
    raw_seconds = raw_decode(lm, prompt_ids, rows, tokens_per_row, seed=0)
    rate, raw_rate = generated / seconds, rows * tokens_per_row / raw_seconds
    click.echo(
        f"\npacked: {num_problems} problems x {num_particles} particles (SMC) in {rows} rows, "
        f"ragged steps\n{generated} tokens, {rate:.1f} tok/s, raw {raw_rate:.1f} tok/s at "
        f"{rows} rows x {tokens_per_row} tokens, ratio {rate / raw_rate:.2f}, idle rows {idle:.1%}"
    )


def measure(lm, method, prompt_ids, num_particles, steps, step_tokens, stop, repeats) -> dict:
    """Medians over repeats of one engine run and one raw run each."""
    figures: dict[str, list[float]] = {
        key: [] for key in ("tokens", "rate", "raw", "ratio", "idle", "passes", "resampled")
    }
    for seed in range(repeats):
        seconds, delta, posterior = engine_run(
            lm, method, num_particles, steps, step_tokens, stop, seed
        )
        generated = delta["tokens_generated"]
        tokens_per_row = max(1, round(generated / num_particles))
        raw_seconds = raw_decode(lm, prompt_ids, num_particles, tokens_per_row, seed)
        rate = generated / seconds
        raw_rate = num_particles * tokens_per_row / raw_seconds
        figures["tokens"].append(tokens_per_row)
        figures["rate"].append(rate)
        figures["raw"].append(raw_rate)
        figures["ratio"].append(rate / raw_rate)
        # Decode passes also feed rows that idle until the batch sheds them.
        figures["idle"].append(delta["idle_rows"] / max(1, delta["decode_rows"]))
        figures["passes"].append(delta["forward_calls"] / tokens_per_row)
        figures["resampled"].append(sum(r.resampled for r in posterior.rounds[0]))
    return {key: statistics.median(values) for key, values in figures.items()}


if __name__ == "__main__":
    main()
