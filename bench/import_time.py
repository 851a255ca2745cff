"""Import time of ``import ppl`` now against an earlier commit, measured in one run.

Each measurement is a fresh interpreter running ``import ppl`` with
``-X importtime``; the script reads the cumulative time of the top-level
``ppl`` import and whether click or matplotlib were loaded. The earlier
commit is checked out into a temporary git worktree, and the two trees are
measured alternately so that load on the machine falls on both alike.

Run: ``python bench/import_time.py --before 7e0ad4e^ --repeats 7``
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def measure(tree: Path) -> tuple[float, set[str]]:
    """Seconds the ``ppl`` import took in a fresh interpreter, and the heavy packages it loaded."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import ppl"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, loaded = None, set()
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        if name.split(".")[0] in ("click", "matplotlib"):
            loaded.add(name.split(".")[0])
        if name == "ppl":
            seconds = int(cumulative) / 1e6
    if seconds is None:
        raise RuntimeError(f"no 'ppl' import in the -X importtime output of {tree}")
    return seconds, loaded


@click.command()
@click.option("--before", default="7e0ad4e^", show_default=True, help="Earlier commit.")
@click.option("--repeats", default=7, show_default=True)
def main(before: str, repeats: int) -> None:
    """Median import time of ``ppl`` in the working tree and at ``--before``."""
    with tempfile.TemporaryDirectory() as scratch:
        old = Path(scratch) / "before"
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(old), before], cwd=ROOT, check=True
        )
        try:
            times: dict[str, list[float]] = {"before": [], "now": []}
            heavy: dict[str, set[str]] = {"before": set(), "now": set()}
            for _ in range(repeats):
                for label, tree in (("before", old), ("now", ROOT)):
                    seconds, loaded = measure(tree)
                    times[label].append(seconds)
                    heavy[label] |= loaded
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    medians = {label: statistics.median(values) for label, values in times.items()}
    for label in ("before", "now"):
        ref = before if label == "before" else "working tree"
        packages = ", ".join(sorted(heavy[label])) or "neither"
        print(
            f"{label:<7} ({ref}): median {medians[label]:.2f} s over {repeats}; "
            f"click/matplotlib loaded: {packages}"
        )
    print(f"ratio now / before: {medians['now'] / medians['before']:.2f}")


if __name__ == "__main__":
    main()
