"""Learned twists against none on the lipogram task, at equal particle count.

Trains a twist head on the embedded model's hidden states from importance
rollouts of the lipogram program on training prompts, saves it, then runs SMC
on held-out prompts three ways with the same particles and seeds: no twist,
the learned twist (resampling only), and the learned twist with its twisted
proposal. Prints, per variant: final ESS, the fraction of particles that
satisfy the constraint to the end (nonzero final weight), the fraction that
finish a sentence, log-evidence mean and spread across seeds, and seconds.

Run: ``OMP_NUM_THREADS=1 python bench/learned_twist.py`` (about 10 minutes on
one CPU core; ``--head PATH`` reuses a saved head).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import torch

import ppl
from inference.variational import TwistHead, collect_twist_data, fit_twist

TRAIN_PROMPTS = [
    "Here is a short story about a dog. The dog",
    "A poem about the sea. The sea",
    "My friend told me a story. It was about a",
    "On a cold morning, a small bird",
]
TEST_PROMPTS = [
    "Here is a short story about a cat. The cat",
    "Our town has a big park. In the park",
]


@ppl.program
def lipogram(lm, prompt: str, max_tokens: int, head=None, proposal=None):
    """The lipogram of ``examples/lipogram.py`` with an optional learned twist and proposal."""
    text = ""
    for i in range(max_tokens):
        token = ppl.step(
            f"token_{i}", lm, prompt + text, stop=(), max_tokens=1, logits_processor=proposal
        )
        if head is not None:
            # Before the check: rollouts that fail it still teach the head (label 0).
            ppl.learned_twist(f"twist_{i}", head, lm, prompt + text, token)
        ppl.condition(f"no_e_{i}", "e" not in token.lower())
        text += token
        if token.finished or "." in token or "\n" in token:
            break
    ppl.answer(text.strip())


def train(
    lm, particles: int, max_tokens: int, hidden_size: int, weight_decay: float, seed: int
) -> TwistHead:
    head = TwistHead.for_lm(lm, hidden_size=hidden_size)
    datasets = [
        collect_twist_data(
            head, lipogram, lm, prompt, max_tokens, head, num_particles=particles, seed=seed + i
        )
        for i, prompt in enumerate(TRAIN_PROMPTS)
    ]
    data = datasets[0]
    for extra in datasets[1:]:
        data.features = torch.cat([data.features, extra.features])
        data.labels = torch.cat([data.labels, extra.labels])
        data.weights = torch.cat([data.weights, extra.weights])
    losses = fit_twist(head, data, num_epochs=400, learning_rate=0.01, weight_decay=weight_decay)
    click.echo(
        f"trained on {len(data)} twist sites ({particles} rollouts x {len(TRAIN_PROMPTS)} "
        f"prompts), mean label {float(data.labels.mean()):.3f}, loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}"
    )
    return head


@click.command()
@click.option("--particles", default=16, show_default=True, help="SMC particles per run.")
@click.option("--seeds", default=8, show_default=True, help="SMC runs per prompt and variant.")
@click.option("--max-tokens", default=20, show_default=True)
@click.option("--train-particles", default=256, show_default=True, help="Rollouts per prompt.")
@click.option(
    "--hidden-size", default=0, show_default=True, help="Twist head MLP width (0: linear)."
)
@click.option("--weight-decay", default=1e-3, show_default=True, help="Twist head L2 penalty.")
@click.option("--head", "head_path", type=click.Path(dir_okay=False), default=None)
@click.option("--save", "save_path", default="runs/lipogram_twist.pt", show_default=True)
def main(
    particles, seeds, max_tokens, train_particles, hidden_size, weight_decay, head_path, save_path
):
    """Compare no twist, learned twist, and learned twist + twisted proposal."""
    import models

    lm = models.default_lm()
    started = time.perf_counter()
    if head_path:
        head = TwistHead.load(head_path)
    else:
        head = train(lm, train_particles, max_tokens, hidden_size, weight_decay, seed=1000)
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        head.save(save_path)
        click.echo(f"saved {save_path} after {time.perf_counter() - started:.0f}s")
    variants = {
        "none": (None, None),
        "learned twist": (head, None),
        "twist + proposal": (head, head.proposal(lm)),
    }
    click.echo(
        f"\nSMC, {particles} particles, {seeds} seeds x {len(TEST_PROMPTS)} held-out prompts, "
        f"up to {max_tokens} tokens"
    )
    click.echo(
        f"{'variant':<18} {'final ESS':>9} {'alive':>6} {'sentence':>8} "
        f"{'log Z mean':>10} {'log Z sd':>8} {'seconds':>8}"
    )
    for name, (twist_head, proposal) in variants.items():
        ess, alive, sentence, log_z, seconds = [], [], [], [], 0.0
        for prompt in TEST_PROMPTS:
            prompt_log_z = []
            for seed in range(seeds):
                started = time.perf_counter()
                post = ppl.smc(
                    lipogram,
                    lm,
                    prompt,
                    max_tokens,
                    twist_head,
                    proposal,
                    num_particles=particles,
                    seed=seed,
                )
                seconds += time.perf_counter() - started
                weights = np.asarray(post.log_weights)
                ess.append(post.ess)
                alive.append(float(np.mean(weights > -np.inf)))
                finished = [str(t.answer).endswith(".") for t in post.particles]
                sentence.append(
                    float(
                        np.mean(
                            [f for f, w in zip(finished, weights, strict=True) if w > -np.inf]
                            or [0.0]
                        )
                    )
                )
                prompt_log_z.append(post.log_evidence)
            log_z.append(prompt_log_z)
        log_z = np.array(log_z)
        spread = float(np.mean(log_z.std(axis=1, ddof=1)))
        click.echo(
            f"{name:<18} {np.mean(ess):>9.2f} {np.mean(alive):>6.2f} {np.mean(sentence):>8.2f} "
            f"{np.mean(log_z):>10.3f} {spread:>8.3f} {seconds:>8.1f}"
        )


if __name__ == "__main__":
    main()
