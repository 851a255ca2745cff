"""Particle filtering for inference-time scaling, as in Puri et al. 2025 and its_hub.

The language model, sampled the way practitioners sample it (temperature 0.7,
top-k 50), is the prior: ``ppl.step`` targets that sampler, so drawing from it
adds no weight. After every line a step reward ``r`` scores the newest line,
and its odds ``r / (1 - r)`` (``transform="logit"``) guide the particles. SMC
with ``ess_threshold=1.0`` resamples after every line; a lower threshold
resamples when the ESS drops.

``potential="latest"`` (the default) is the paper's weighting: the odds of the
latest step's reward are the current potential (``verifier.twist``), so a
particle's weight since the last resampling telescopes to its latest odds over
those it was resampled with, and the last line's odds stay as a factor. The
target is the sampler times the odds of the final line, and a particle that
finished early keeps its standing instead of losing to ones still writing.
``potential="product"`` makes every step's odds a factor: the target is the
sampler times the product of the steps' odds, which favours longer solutions
(each further accepted line multiplies the weight by the odds of a score near
1, about ``1e6``).

A solution ends at a line containing "Answer" or at the line limit. A reply
the model closes early (end of sequence) goes on at the next line, as its_hub
prompts the open reply again: stopping there instead left many particles with
prose and no answer line.

Two final selections read one run: ``posterior.best_of_n_answer()`` (argmax of
the final weights, its_hub's default) and ``posterior.map_answer()`` (weighted
vote). The recipe is ``examples/recipes/particle_filtering.toml``.

Run: ``python examples/particle_filtering.py --problems 3 --particles 8``
"""

from __future__ import annotations

import click
from arithmetic_suite import INSTRUCTIONS, line_check

import ppl
from models.verifiers import ProgrammaticVerifier
from ppl.answers import extract_answer
from ppl.cli.tasks import arithmetic

POTENTIALS = ("latest", "product")
# The same prompt and step reward as the suite: 1 when the newest line's
# equations hold, else 0.05.
step_reward = line_check

reward = ProgrammaticVerifier(step_reward, level="step", aggregate="last")


@ppl.program
def solve(lm, question: str, max_lines: int = 3, potential: str = "latest"):
    """One line per step at the practitioners' sampler, guided by its reward's odds."""
    if potential not in POTENTIALS:
        raise ppl.InvalidArgumentError(f"potential must be one of {POTENTIALS}, got {potential!r}")
    chat = ppl.Chat(f"{INSTRUCTIONS}\n\nQuestion: {question}")
    lines: list[str] = []
    for i in range(max_lines):
        line = ppl.step(
            f"line_{i}", lm, chat, stop=("\n",), max_tokens=24, temperature=0.7, top_k=50
        )
        # A reply the model closes early goes on at the next line, as its_hub prompts it
        # again: only "Answer" (as the instructions write it) or the line limit ends it.
        chat = chat + (line + "\n" if line.finished else line)
        lines.append(line)
        last = "Answer" in line or i == max_lines - 1
        score = reward.twist if potential == "latest" and not last else reward.factor
        score(f"reward_{i}", question, lines, transform="logit")
        if last:
            break
    ppl.answer(extract_answer(chat.assistant))


def particle_filter(lm, question: str, num_particles: int, seed: int) -> ppl.Posterior:
    """The paper's particle filter: SMC resampling after every step.

    Example (with the embedded model as ``lm``; minutes of decoding, so not run as a test):
        >>> posterior = particle_filter(lm, "What is 3 + 4?", 8, seed=0)  # doctest: +SKIP
        >>> posterior.best_of_n_answer(), posterior.map_answer()       # doctest: +SKIP
        ('7', '7')
    """
    return ppl.smc(solve, lm, question, num_particles=num_particles, ess_threshold=1.0, seed=seed)


@click.command()
@click.option("--problems", default=3, show_default=True, help="Arithmetic problems to solve.")
@click.option("--particles", default=8, show_default=True, help="Particles per problem.")
@click.option("--seed", default=0, show_default=True)
def main(problems: int, particles: int, seed: int) -> None:
    """Run the particle filter on the easiest arithmetic problems; print both selections."""
    import models

    lm = models.default_lm()
    task = arithmetic(problems)
    for problem in task:
        posterior = particle_filter(lm, problem.question, particles, seed)
        if posterior.is_empty:
            click.echo(f"{problem.question}  ->  no surviving particle")
            continue
        best, vote = posterior.best_of_n_answer(), posterior.map_answer()
        verdicts = [task.is_correct(problem, answer) for answer in (best, vote)]
        click.echo(
            f"{problem.question}  ->  argmax {best} ({'right' if verdicts[0] else 'wrong'}), "
            f"weighted vote {vote} ({'right' if verdicts[1] else 'wrong'}); "
            f"reference {problem.answers[0]}"
        )


if __name__ == "__main__":
    main()
