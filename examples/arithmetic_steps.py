"""A multi-step arithmetic word problem: one line per step, a calculator checks each line.

Every line of the model's solution is a ``ppl.step``. Each ``a op b = c`` in a
line is checked by an exact calculator through ``ppl.memo`` (so re-execution
never re-runs it) and enters as a ``ppl.factor``: a wrong equation multiplies
the particle's weight by ``error_rate``. SMC then resamples towards solutions
whose arithmetic holds, and the posterior over final answers carries the
uncertainty that remains.

Run: ``python examples/arithmetic_steps.py --particles 8``
"""

from __future__ import annotations

import math
import re

import click

import ppl
from models.verifiers.programmatic import NUMBER, calculator_check, equations

QUESTION = (
    "Tom has 3 boxes with 12 apples in each box. He eats 5 apples. "
    "How many apples does Tom have left?"
)
INSTRUCTIONS = (
    "Solve the problem step by step. Write one calculation per line, like '3 * 4 = 12'. "
    "Finish with a line 'Answer: N'."
)
ANSWER = re.compile(rf"[Aa]nswer\s*[:=]?\s*\$?({NUMBER})")


def final_answer(text: str) -> str | None:
    """The number after 'Answer:', else the result of the last equation, else None.

    Example:
        >>> final_answer("3 * 12 = 36\\nAnswer: 31"), final_answer("36 - 5 = 31")
        ('31', '31')
    """
    found = ANSWER.findall(text)
    if found:
        return found[-1]
    written = equations(text)
    return written[-1][3] if written else None


@ppl.program
def arithmetic(lm, question: str = QUESTION, max_lines: int = 6, error_rate: float = 0.05):
    chat = ppl.Chat(f"{question}\n{INSTRUCTIONS}")
    for i in range(max_lines):
        line = ppl.step(f"line_{i}", lm, chat, stop=("\n",), max_tokens=40, temperature=0.8)
        chat = chat + line
        for j, equation in enumerate(equations(line)):
            correct = ppl.memo(f"check_{i}_{j}", calculator_check, *equation)
            ppl.factor(f"calculator_{i}_{j}", 0.0 if correct else math.log(error_rate))
        if line.finished or ANSWER.search(line):
            break
    ppl.answer(final_answer(chat.assistant))


@click.command()
@click.option("--particles", default=8, show_default=True, help="Number of SMC particles.")
@click.option("--max-lines", default=6, show_default=True, help="Lines per solution.")
@click.option("--seed", default=0, show_default=True)
def main(particles: int, max_lines: int, seed: int) -> None:
    """Solve the word problem with SMC on the embedded model and print the report."""
    import models

    lm = models.default_lm()
    posterior = ppl.smc(arithmetic, lm, QUESTION, max_lines, num_particles=particles, seed=seed)
    click.echo(f"Question: {QUESTION}\n")
    click.echo(posterior.summary())
    best = max(range(posterior.num_particles), key=lambda i: posterior.log_weights[i])
    click.echo("\nHighest-weight solution:\n" + posterior.particles[best].answer.__repr__())
    click.echo("".join(s.value for s in posterior.particles[best].steps))


if __name__ == "__main__":
    main()
