"""SMC throughput through an OpenAI-compatible server against the local backends.

The same program (N=16 particles, sentence steps) runs through ``OpenAILM``
and through ``TransformersLM`` (and ``LlamaCppLM`` when llama-cpp-python is
installed) on the same model, one after the other; each prints generated
tokens per second, and the ratio is server over local.

By default the script starts llama-cpp-python's server on the embedded GGUF
(``pip install 'pplscale[server]'``). That server decodes one request at a
time and builds log-probabilities in Python, so on a CPU it is far slower than
the batched local backends: the figure shows the cost of the HTTP path, not
of serving. On GPU servers the same code path runs unchanged: start vLLM or
SGLang (see the README, "Serving at scale") and pass ``--base-url``,
``--model``, ``--tokenizer`` and ``--server``; the local baseline then needs
``--local-model`` (a Hugging Face directory of the same model) or is skipped.

Run: ``python bench/serving.py``  (``--particles``, ``--steps``, ``--repeats``)
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time

import click

import models
import ppl
from models import embedded

PROMPT = "Write a short story about a fox who finds a key.\n\nOnce upon a time"


@ppl.program
def story(lm, prompt: str, num_steps: int, step_tokens: int):
    text = prompt
    for t in range(num_steps):
        sentence = ppl.step(f"sentence_{t}", lm, text, stop=(".", "\n"), max_tokens=step_tokens)
        ppl.factor(f"brevity_{t}", -0.02 * len(sentence))
        text += sentence
    ppl.answer(text[len(prompt) :])


def tokens_per_second(lm, particles: int, steps: int, step_tokens: int, repeats: int):
    """Median generated tokens/s over ``repeats`` SMC runs, and the tokens of one run."""
    rates, tokens = [], 0
    for seed in range(repeats):
        started = time.perf_counter()
        posterior = ppl.smc(
            story, lm, PROMPT, steps, step_tokens, num_particles=particles, seed=seed
        )
        seconds = time.perf_counter() - started
        tokens = posterior.cost.tokens_generated
        rates.append(tokens / seconds)
    return statistics.median(rates), tokens


def start_llama_server(threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w", prefix="llama-server-", suffix=".log", delete=False)
    command = embedded.llama_server_command(port, threads=threads)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/v1"


@click.command()
@click.option("--particles", default=16, show_default=True)
@click.option("--steps", default=3, show_default=True)
@click.option("--step-tokens", default=16, show_default=True)
@click.option("--repeats", default=1, show_default=True)
@click.option("--threads", default=2, show_default=True, help="llama.cpp server threads")
@click.option("--base-url", default=None, help="an already running server (…/v1)")
@click.option("--model", "served_model", default="smollm2", show_default=True)
@click.option("--tokenizer", default=None, help="tokenizer directory (default: embedded)")
@click.option("--server", "profile", default="llama-cpp-python", show_default=True)
@click.option("--concurrency", default=16, show_default=True)
@click.option("--local-model", default=None, help="HF directory for the local baseline")
def main(
    particles,
    steps,
    step_tokens,
    repeats,
    threads,
    base_url,
    served_model,
    tokenizer,
    profile,
    concurrency,
    local_model,
):
    process = None
    if base_url is None:
        process, base_url = start_llama_server(threads)
    try:
        if local_model is not None:
            local = models.TransformersLM.from_pretrained(local_model)
        elif tokenizer is None:
            local = models.default_lm()
        else:
            local = None
        client = models.OpenAILM(
            base_url,
            served_model,
            tokenizer=tokenizer or local.tokenizer,
            server=profile,
            eos_token_ids=None if local is None else sorted(local.eos_token_ids),
            max_concurrency=concurrency,
            timeout=300,
        )
        client.wait_until_ready(timeout=180)
        print(
            f"SMC, N={particles}, {steps} steps of up to {step_tokens} tokens, {repeats} repeat(s)"
        )
        print(f"{'backend':<28}{'tokens':>8}{'tokens/s':>10}")
        served_rate, served_tokens = tokens_per_second(
            client, particles, steps, step_tokens, repeats
        )
        print(f"{'OpenAILM (' + profile + ')':<28}{served_tokens:>8}{served_rate:>10.1f}")
        client.close()
        if local is None:
            return
        local_rate, local_tokens = tokens_per_second(local, particles, steps, step_tokens, repeats)
        print(f"{'TransformersLM':<28}{local_tokens:>8}{local_rate:>10.1f}")
        if local_model is None:
            try:
                llama = models.LlamaCppLM.embedded(max_sequences=particles)
            except ppl.ModelNotInstalledError:
                llama = None
            if llama is not None:
                rate, count = tokens_per_second(llama, particles, steps, step_tokens, repeats)
                print(f"{'LlamaCppLM':<28}{count:>8}{rate:>10.1f}")
                llama.close()
        print(f"ratio server / TransformersLM: {served_rate / local_rate:.3f}")
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
