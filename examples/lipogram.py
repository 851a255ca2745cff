"""Continue a sentence without the letter "e": SMC with a hard constraint per token.

Each token is one ``ppl.step``; ``ppl.condition`` rejects any token containing
"e", so SMC prunes dead particles at once and resamples survivors. The
posterior is the model's distribution over continuations conditioned on
never writing an "e". With ``--twist``, a heuristic potential favours
particles whose current word is short (long words tend to need an "e" later):
it changes which particles survive resampling, not the target. With
``--mask``, a ``models.BannedTokens`` logits processor removes every token
containing an "e" from the proposal: the target is the same (those tokens
fail the condition anyway), the weights account for the mask in ``log q``, and
no particle dies.

Run: ``python examples/lipogram.py --particles 16``
"""

from __future__ import annotations

import click

import ppl

PROMPT = "Here is a short story about a cat. The cat"


@ppl.program
def lipogram(lm, prompt: str = PROMPT, max_tokens: int = 24, use_twist: bool = False, mask=None):
    text = ""
    for i in range(max_tokens):
        token = ppl.step(
            f"token_{i}", lm, prompt + text, stop=(), max_tokens=1, logits_processor=mask
        )
        ppl.condition(f"no_e_{i}", "e" not in token.lower())
        text += token
        if use_twist:
            current_word = text.rsplit(" ", 1)[-1]
            ppl.twist(-0.3 * len(current_word))
        if token.finished or "." in token or "\n" in token:
            break
    ppl.answer(text.strip())


@click.command()
@click.option("--particles", default=16, show_default=True, help="Number of SMC particles.")
@click.option("--max-tokens", default=24, show_default=True, help="Tokens per continuation.")
@click.option("--twist/--no-twist", default=False, help="Use the short-word twist.")
@click.option("--mask/--no-mask", default=False, help="Propose only tokens without an 'e'.")
@click.option("--seed", default=0, show_default=True)
def main(particles: int, max_tokens: int, twist: bool, mask: bool, seed: int) -> None:
    """Run lipogram SMC on the embedded model and print the uncertainty report."""
    import models

    lm = models.default_lm()
    no_e = models.BannedTokens.from_predicate(lm, lambda text: "e" in text.lower())
    posterior = ppl.smc(
        lipogram,
        lm,
        PROMPT,
        max_tokens,
        twist,
        no_e if mask else None,
        num_particles=particles,
        seed=seed,
    )
    click.echo(f"Prompt: {PROMPT!r} ... continued without the letter 'e'\n")
    click.echo(posterior.summary())


if __name__ == "__main__":
    main()
