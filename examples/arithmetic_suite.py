"""Solve the synthetic arithmetic suite one calculation per line, checked by a calculator.

Each line is a ``ppl.step``. A step-level calculator verifier judges the
newest line through ``ppl.memo`` (replayed, never recomputed): 1 when every
``a op b = c`` in it holds, ``error_rate`` otherwise, and the score enters as
a ``log p`` factor. Importance sampling, SMC and beam search then prefer
solutions whose arithmetic holds. This is the program ``ppl bench`` runs on
``ppl.tasks.arithmetic`` in ``bench/README.md``.

Run: ``python examples/arithmetic_suite.py --problems 3 --particles 4``
"""

from __future__ import annotations

import click

import ppl
from models.verifiers import ProgrammaticVerifier, calculator_check, equations
from ppl.answers import extract_answer
from ppl.cli.tasks import arithmetic

INSTRUCTIONS = (
    "Solve the problem with one calculation per line, then give the result "
    "on a line 'Answer: N'. Example:\n"
    "Question: What is 2 + 5?\n2 + 5 = 7\nAnswer: 7"
)
ERROR_RATE = 0.05


def line_check(question: str, lines: tuple[str, ...]) -> float:
    """1 when every equation of the newest line holds, else ``ERROR_RATE``.

    Example:
        >>> line_check("", ("2 + 5 = 7\\n",)), line_check("", ("2 + 5 = 8\\n",))
        (1.0, 0.05)
    """
    ok = all(calculator_check(*equation) for equation in equations(lines[-1]))
    return 1.0 if ok else ERROR_RATE


calculator = ProgrammaticVerifier(line_check, level="step", aggregate="last")


@ppl.program
def solve(lm, question: str, max_lines: int = 3):
    chat = ppl.Chat(f"{INSTRUCTIONS}\n\nQuestion: {question}")
    lines: list[str] = []
    for i in range(max_lines):
        line = ppl.step(
            f"line_{i}", lm, chat, stop=("\n",), max_tokens=24, temperature=0.7, top_k=50
        )
        chat = chat + line
        lines.append(line)
        calculator.factor(f"calculator_{i}", question, lines)
        if line.finished or "answer" in line.lower():
            break
    ppl.answer(extract_answer(chat.assistant))


@click.command()
@click.option("--problems", default=3, show_default=True, help="Arithmetic problems to solve.")
@click.option("--particles", default=4, show_default=True, help="SMC particles per problem.")
@click.option("--seed", default=0, show_default=True)
def main(problems: int, particles: int, seed: int) -> None:
    """Run SMC on the first problems of the easiest arithmetic suite and print the answers."""
    import models

    lm = models.default_lm()
    task = arithmetic(problems)
    for problem in task:
        posterior = ppl.smc(solve, lm, problem.question, num_particles=particles, seed=seed)
        answer = posterior.map_answer() if not posterior.is_empty else None
        verdict = "correct" if task.is_correct(problem, answer) else "wrong"
        click.echo(f"{problem.question}  ->  {answer}  ({verdict}; reference {problem.answers[0]})")


if __name__ == "__main__":
    main()
