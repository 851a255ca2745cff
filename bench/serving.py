"""SMC throughput through an OpenAI-compatible server against the local backends.

The same program (sentence steps) runs through ``OpenAILM`` and through
``TransformersLM`` and ``LlamaCppLM`` on the same model, one after the other;
each prints generated tokens per second, and the ratios are server over local.

``embedded`` starts llama.cpp's C++ ``llama-server`` on the embedded GGUF
(built by ``scripts/build_llama_cpp.sh``) with one slot per particle,
continuous batching and its prompt cache, and prints the share of the
server's slots busy per decode (its ``n_busy_slots_per_decode`` metric over
the slots). ``--server llama-cpp-python`` starts llama-cpp-python's server
instead, which decodes one request at a time.

``remote`` measures an already running server (vLLM or SGLang on GPUs, see
the README, "Serving at scale"): pass ``--base-url``, ``--model``,
``--tokenizer`` and ``--server``; the local baseline then needs
``--local-model`` (a Hugging Face directory of the same model) or is skipped.

Run: ``python bench/serving.py embedded --particles 16 --particles 64``
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import time

import click
import httpx

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
    """Median tokens/s over ``repeats`` SMC runs; tokens generated and prefilled in one run."""
    rates, tokens, prefilled = [], 0, 0
    # A short run first: one-off start-up work (a server's first batches, allocations).
    ppl.smc(story, lm, PROMPT, 1, step_tokens, num_particles=particles, seed=repeats)
    for seed in range(repeats):
        started = time.perf_counter()
        posterior = ppl.smc(
            story, lm, PROMPT, steps, step_tokens, num_particles=particles, seed=seed
        )
        seconds = time.perf_counter() - started
        tokens, prefilled = posterior.cost.tokens_generated, posterior.cost.tokens_prefilled
        rates.append(tokens / seconds)
    return statistics.median(rates), tokens, prefilled


def start_llama_server(profile: str, threads: int, slots: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w", prefix="llama-server-", suffix=".log", delete=False)
    if profile == "llama.cpp":
        command = embedded.llama_cpp_server_command(
            port, slots=slots, n_ctx=256 * slots, threads=threads
        )
    else:
        command = embedded.llama_server_command(port, threads=threads)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}/v1"


def server_metrics(base_url: str) -> dict[str, float]:
    """llama-server's /metrics counters by name (``llamacpp:`` dropped); empty if unavailable."""
    try:
        text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return embedded.parse_server_metrics(text)


def print_server_profile(particles: int, metrics: dict, slots: int, client_cpu: float, wall: float):
    """Where the served runs' time went: the server's prefill and decode, and the client."""
    if "n_busy_slots_per_decode" in metrics:
        share = metrics["n_busy_slots_per_decode"] / slots
        print(f"N={particles}: share of server slots busy per decode: {share:.2f}")
    if "prompt_tokens_total" in metrics:
        cached = metrics.get("prompt_tokens_cached_total", float("nan"))
        print(
            f"N={particles}: server prompt tokens evaluated {metrics['prompt_tokens_total']:.0f}"
            f" (cached {cached:.0f}) in {metrics['prompt_seconds_total']:.1f} s; "
            f"{metrics['tokens_predicted_total']:.0f} tokens decoded in "
            f"{metrics['tokens_predicted_seconds_total']:.1f} s"
        )
    print(f"N={particles}: client CPU {client_cpu:.1f} s over {wall:.1f} s of served runs")


def run_one(particles, steps, step_tokens, repeats, threads, profile, local, llama):
    """Tokens/s through a fresh server and locally for one particle count."""
    process, base_url = start_llama_server(profile, threads, particles)
    try:
        client = models.OpenAILM(
            base_url,
            "smollm2",
            tokenizer=local.tokenizer,
            server=profile,
            eos_token_ids=sorted(local.eos_token_ids),
            timeout=600,
        )
        client.wait_until_ready(timeout=180)
        cpu, wall = time.process_time(), time.perf_counter()
        served, served_tokens, _ = tokens_per_second(client, particles, steps, step_tokens, repeats)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        metrics = server_metrics(base_url) if profile == "llama.cpp" else {}
        client.close()
    finally:
        process.terminate()
        process.wait()
    print(f"N={particles}: {'OpenAILM (' + profile + ')':<28}{served_tokens:>8}{served:>10.1f}")
    print_server_profile(particles, metrics, particles, cpu, wall)
    rate, tokens, prefilled = tokens_per_second(local, particles, steps, step_tokens, repeats)
    print(f"N={particles}: {'TransformersLM':<28}{tokens:>8}{rate:>10.1f}  prefilled {prefilled}")
    print(f"N={particles}: ratio server / TransformersLM: {served / rate:.3f}")
    if llama is not None:
        llama_rate, count, prefilled = tokens_per_second(
            llama, particles, steps, step_tokens, repeats
        )
        print(
            f"N={particles}: {'LlamaCppLM':<28}{count:>8}{llama_rate:>10.1f}  prefilled {prefilled}"
        )
        print(f"N={particles}: ratio server / LlamaCppLM: {served / llama_rate:.3f}")


@click.command("embedded")
@click.option("--particles", "particle_counts", multiple=True, default=(16, 64), type=int)
@click.option("--steps", default=3, show_default=True)
@click.option("--step-tokens", default=16, show_default=True)
@click.option("--repeats", default=1, show_default=True)
@click.option("--threads", default=2, show_default=True, help="llama.cpp threads")
@click.option("--server", "profile", default="llama.cpp", show_default=True)
def embedded_main(particle_counts, steps, step_tokens, repeats, threads, profile):
    """The embedded model through a server started here, against the local backends."""
    local = models.default_lm()
    try:
        llama = models.LlamaCppLM.embedded(max_sequences=max(particle_counts), threads=threads)
    except ppl.ModelNotInstalledError:
        llama = None
    print(f"SMC, {steps} steps of up to {step_tokens} tokens, {repeats} repeat(s)")
    print(f"{'':7}{'backend':<28}{'tokens':>8}{'tokens/s':>10}")
    for particles in particle_counts:
        run_one(particles, steps, step_tokens, repeats, threads, profile, local, llama)


@click.command("remote")
@click.option("--particles", default=16, show_default=True)
@click.option("--steps", default=3, show_default=True)
@click.option("--step-tokens", default=16, show_default=True)
@click.option("--repeats", default=1, show_default=True)
@click.option("--base-url", required=True, help="an already running server (…/v1)")
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
    base_url,
    served_model,
    tokenizer,
    profile,
    concurrency,
    local_model,
):
    """An already running server (vLLM, SGLang, ...) against a local copy of its model."""
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
    print(f"SMC, N={particles}, {steps} steps of up to {step_tokens} tokens, {repeats} repeat(s)")
    print(f"{'backend':<28}{'tokens':>8}{'tokens/s':>10}")
    served_rate, served_tokens, _ = tokens_per_second(
        client, particles, steps, step_tokens, repeats
    )
    print(f"{'OpenAILM (' + profile + ')':<28}{served_tokens:>8}{served_rate:>10.1f}")
    client.close()
    if local is None:
        return
    local_rate, local_tokens, _ = tokens_per_second(local, particles, steps, step_tokens, repeats)
    print(f"{'TransformersLM':<28}{local_tokens:>8}{local_rate:>10.1f}")
    if local_model is None:
        try:
            llama = models.LlamaCppLM.embedded(max_sequences=particles)
        except ppl.ModelNotInstalledError:
            llama = None
        if llama is not None:
            rate, count, _ = tokens_per_second(llama, particles, steps, step_tokens, repeats)
            print(f"{'LlamaCppLM':<28}{count:>8}{rate:>10.1f}")
            llama.close()
    print(f"ratio server / TransformersLM: {served_rate / local_rate:.3f}")


main = click.Group(commands=[embedded_main, main])

if __name__ == "__main__":
    main()
