"""The lipogram task with pplscale's SMC and with LLaMPPL, on the same local model.

Both continue the same prompt token by token without the letter "e" (a hard
condition per token), N=8 particles, at most 30 tokens, stopping at a
sentence end. LLaMPPL 0.2.3 runs with its Hugging Face backend in its own
virtual environment (``.bench-venv/llamppl``, created on first use with
torch 2.13 CPU and ``llamppl==0.2.3``), reading the same converted copy of
the embedded model. The figure is CPU seconds (all threads) per token of the
final particles; the ratio is ours over theirs. Model loading is excluded.

Run: ``python bench/vs_llamppl.py``  (``--seeds``; the first run installs LLaMPPL)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

import click
import torch

import models
import ppl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from lipogram import PROMPT, lipogram  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LLAMPPL_VENV = ROOT / ".bench-venv" / "llamppl"


def llamppl_python() -> Path:
    """The LLaMPPL venv's interpreter, creating the venv on first use."""
    python = LLAMPPL_VENV / "bin" / "python"
    check = [str(python), "-c", "import llamppl"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    click.echo(f"installing llamppl==0.2.3 into {LLAMPPL_VENV} (first run only)...")
    venv.create(LLAMPPL_VENV, with_pip=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    # torch first, pinned to the CPU build, so no dependency pulls a CUDA one.
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "llamppl==0.2.3"], check=True)
    return python


def ours(particles: int, tokens: int, seeds: int) -> list[float]:
    lm = models.default_lm()
    per_token = []
    for seed in range(seeds):
        lm._batch = None
        started_cpu = time.process_time()
        posterior = ppl.smc(lipogram, lm, PROMPT, tokens, num_particles=particles, seed=seed)
        cpu = time.process_time() - started_cpu
        final_tokens = sum(
            sum(len(site.value.token_ids) for site in trace.steps) for trace in posterior.particles
        )
        per_token.append(cpu / final_tokens)
    return per_token


def theirs(particles: int, tokens: int, seeds: int) -> list[float]:
    command = [
        str(llamppl_python()),
        str(ROOT / "bench" / "llamppl_lipogram.py"),
        f"--model={models.embedded.converted_model_dir()}",
        f"--prompt={PROMPT}",
        f"--particles={particles}",
        f"--tokens={tokens}",
        f"--seeds={seeds}",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    runs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [run["cpu_seconds"] / run["final_tokens"] for run in runs]


@click.command()
@click.option("--particles", default=8, show_default=True)
@click.option("--tokens", default=30, show_default=True, help="Token limit per particle.")
@click.option("--seeds", default=3, show_default=True, help="Runs per library; medians shown.")
def main(particles: int, tokens: int, seeds: int) -> None:
    their_costs = theirs(particles, tokens, seeds)
    our_costs = ours(particles, tokens, seeds)
    mine, other = statistics.median(our_costs), statistics.median(their_costs)
    click.echo(
        f"lipogram SMC, N={particles}, <= {tokens} tokens, median of {seeds} runs, "
        f"{torch.get_num_threads()} torch threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')} (both processes)"
    )
    click.echo(f"{'library':>9} {'CPU ms / final token':>21}")
    click.echo(f"{'pplscale':>9} {1000 * mine:>21.1f}")
    click.echo(f"{'llamppl':>9} {1000 * other:>21.1f}")
    click.echo(f"ratio (pplscale / llamppl): {mine / other:.3f}")


if __name__ == "__main__":
    main()
