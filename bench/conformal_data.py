"""Write the calibration and held-out splits of the synthetic arithmetic suite as JSONL.

Problems come from ``ppl.cli.tasks.arithmetic`` (one operation on one-digit
numbers); the first ``--calibration`` go to ``calibration.jsonl``, the rest to
``heldout.jsonl``, ready for ``ppl run --dataset``. See ``bench/README.md``.

Run: ``python bench/conformal_data.py --out runs/conformal``
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ppl.cli.tasks import arithmetic


@click.command()
@click.option("--problems", default=100, show_default=True, help="Problems in all.")
@click.option("--calibration", default=60, show_default=True, help="Problems to calibrate on.")
@click.option("--seed", default=11, show_default=True)
@click.option("--out", default="runs/conformal", show_default=True, type=click.Path())
def main(problems: int, calibration: int, seed: int, out: str) -> None:
    """Write OUT/calibration.jsonl and OUT/heldout.jsonl."""
    if not 0 < calibration < problems:
        raise click.BadParameter("needs 0 < --calibration < --problems")
    task = arithmetic(problems, operations=1, digits=1, seed=seed)
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"question": p.question, "answer": p.answers[0]}) for p in task]
    (directory / "calibration.jsonl").write_text("\n".join(lines[:calibration]) + "\n")
    (directory / "heldout.jsonl").write_text("\n".join(lines[calibration:]) + "\n")
    click.echo(f"wrote {calibration} + {problems - calibration} problems to {directory}")


if __name__ == "__main__":
    main()
