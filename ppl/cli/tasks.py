"""Task suites: problems with reference answers, and how predictions are judged against them.

Three sources: JSONL files of ``{question, answer}`` records (a GSM8K-style
``"... #### 72"`` answer keeps the part after ``####``), BIG-bench style
``task.json`` files (``examples`` with ``input`` and ``target`` or
``target_scores``), and a synthetic multi-step arithmetic generator whose
difficulty is set by the number of operations and of digits.

A prediction is judged by extracting the final answer from the text
(``ppl.answers.extract_answer``), normalizing it (``normalize_answer``) and comparing it
with the normalized references. Tasks whose references are all numbers
compare numerically: ``"1,000"``, ``"1000.0"`` and ``"$1000"`` are equal.

Example:
    >>> task = arithmetic(3, operations=2, digits=1, seed=0)
    >>> problem = task.problems[0]
    >>> task.is_correct(problem, f"so the result is {problem.answers[0]}.")
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ppl.answers import HASHES, as_number, extract_answer, normalize_answer
from ppl.errors import InvalidArgumentError, TaskFormatError


@dataclass(frozen=True)
class Problem:
    """One problem: a question and its acceptable reference answers."""

    id: str
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """A named list of problems and the rule that judges predictions.

    Example:
        >>> task = Task("demo", (Problem("0", "2 + 2?", ("4",)),))
        >>> task.numeric, task.canonical("2 + 2 = 4\\nAnswer: 4.0")
        (True, '4')
    """

    name: str
    problems: tuple[Problem, ...]

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    @cached_property
    def numeric(self) -> bool:
        """True when every reference answer is a number."""
        return all(as_number(a) is not None for p in self.problems for a in p.answers)

    def head(self, num_problems: int | None) -> Task:
        """The first ``num_problems`` problems (all when None)."""
        if num_problems is None:
            return self
        if num_problems < 1:
            raise InvalidArgumentError(f"num_problems must be positive, got {num_problems}")
        return Task(self.name, self.problems[:num_problems])

    def canonical(self, prediction) -> str | None:
        """The normalized final answer in ``prediction`` (text or a number), or None."""
        if prediction is None:
            return None
        extracted = extract_answer(str(prediction), numeric=self.numeric)
        return None if extracted is None else normalize_answer(extracted, numeric=self.numeric)

    def is_correct(self, problem: Problem, prediction) -> bool:
        """Whether ``prediction`` gives one of ``problem``'s reference answers."""
        answer = self.canonical(prediction)
        references = {normalize_answer(a, numeric=self.numeric) for a in problem.answers}
        return answer is not None and answer in references


# --- loaders -------------------------------------------------------------------------


def load_jsonl(
    path: str | Path,
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    name: str | None = None,
) -> Task:
    """Problems from a JSONL file with one ``{question, answer}`` object per line.

    ``answer`` may be a string, a number or a list of acceptable answers; a
    string containing ``####`` (GSM8K) keeps what follows the last ``####``.
    An ``id`` field names the problem, else its line number.

    Example:
        >>> line = '{"id": "q1", "question": "2 + 3?", "answer": "2 + 3 = 5 #### 5"}'
        >>> _ = Path("problems.jsonl").write_text(line + "\\n")
        >>> load_jsonl("problems.jsonl")
        Task(name='problems', problems=(Problem(id='q1', question='2 + 3?', answers=('5',)),))
    """
    path = Path(path)
    problems = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or question_key not in record or answer_key not in record:
            raise TaskFormatError(
                f"{path}:{number}: each line must be an object with {question_key!r} and "
                f"{answer_key!r} fields"
            )
        answers = _references(record[answer_key], f"{path}:{number}")
        problem_id = str(record.get("id", number))
        problems.append(Problem(problem_id, str(record[question_key]), answers))
    return _task(name or path.stem, problems, path)


def load_bigbench(path: str | Path) -> Task:
    """Problems from a BIG-bench ``task.json`` (the file, or the directory holding it).

    Each of ``examples`` gives ``input`` and either ``target`` (a string or a
    list of acceptable strings) or ``target_scores`` (the best-scoring
    choices are the answers). The task's prompt prefixes are not applied.

    Example:
        >>> examples = [{"input": "2 + 3", "target": "5"},
        ...             {"input": "1 + 1", "target_scores": {"2": 1, "3": 0}}]
        >>> Path("arith").mkdir()
        >>> _ = Path("arith/task.json").write_text(json.dumps({"examples": examples}))
        >>> [problem.answers for problem in load_bigbench("arith").problems]
        [('5',), ('2',)]
    """
    path = Path(path)
    if path.is_dir():
        path = path / "task.json"
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as error:
        raise TaskFormatError(f"{path}: not valid JSON ({error.msg})") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise TaskFormatError(f"{path}: a BIG-bench task needs an 'examples' list")
    problems = []
    for index, example in enumerate(examples):
        where = f"{path}: example {index}"
        if not isinstance(example, dict) or "input" not in example:
            raise TaskFormatError(f"{where} has no 'input'")
        if "target" in example:
            answers = _references(example["target"], where)
        elif isinstance(example.get("target_scores"), dict) and example["target_scores"]:
            scores = example["target_scores"]
            best = max(scores.values())
            answers = tuple(str(choice) for choice, score in scores.items() if score == best)
        else:
            raise TaskFormatError(f"{where} has neither 'target' nor 'target_scores'")
        problems.append(Problem(str(index), str(example["input"]), answers))
    return _task(str(data.get("name", path.parent.name)), problems, path)


def arithmetic(
    num_problems: int = 20, *, operations: int = 1, digits: int = 1, seed: int = 0
) -> Task:
    """Synthetic multi-step arithmetic with exact integer answers.

    Each problem starts from a ``digits``-digit number and applies
    ``operations`` operations (add, subtract, multiply) with ``digits``-digit
    operands, left to right; subtraction never goes below zero. One
    operation reads "What is 3 + 4?", more read "Start with 3. Add 4.
    Multiply by 2. What is the result?".

    Example:
        >>> [p.question for p in arithmetic(2, seed=1)]
        ['What is 5 * 5?', 'What is 9 + 1?']
        >>> (problem,) = arithmetic(1, operations=3, digits=2, seed=0)
        >>> problem.question, problem.answers
        ('Start with 86. Subtract 67. Add 34. Add 13. What is the result?', ('66',))
    """
    if operations < 1 or digits < 1:
        raise InvalidArgumentError(
            f"operations and digits must be positive, got {operations} and {digits}"
        )
    if num_problems < 1:
        raise InvalidArgumentError(f"num_problems must be positive, got {num_problems}")
    rng = np.random.default_rng(seed)
    low, high = (1 if digits == 1 else 10 ** (digits - 1)), 10**digits
    problems = []
    for index in range(num_problems):
        value = int(rng.integers(low, high))
        start, applied = value, []
        for _ in range(operations):
            operand = int(rng.integers(low, high))
            op = ("+", "-", "*")[int(rng.integers(3))]
            if op == "-" and operand > value:
                op = "+"
            value = (
                value + operand if op == "+" else value - operand if op == "-" else value * operand
            )
            applied.append((op, operand))
        if operations == 1:
            question = f"What is {start} {applied[0][0]} {applied[0][1]}?"
        else:
            words = {"+": "Add {}.", "-": "Subtract {}.", "*": "Multiply by {}."}
            said = " ".join(words[op].format(operand) for op, operand in applied)
            question = f"Start with {start}. {said} What is the result?"
        problems.append(Problem(str(index), question, (str(value),)))
    return Task(f"arithmetic-ops{operations}-digits{digits}", tuple(problems))


def load_task(spec: str, *, num_problems: int | None = None, seed: int = 0) -> Task:
    """A task from a file path or a generator name.

    ``*.jsonl`` files load with ``load_jsonl``, ``*.json`` files and
    directories with ``load_bigbench``; ``arithmetic`` or
    ``arithmetic:operations=2,digits=1`` generates ``num_problems``
    (default 20) problems from ``seed``. ``num_problems`` also keeps the
    first problems of a file.

    Example:
        >>> len(load_task("arithmetic:operations=2", num_problems=5))
        5
    """
    if spec == "arithmetic" or spec.startswith("arithmetic:"):
        options = {}
        for part in filter(None, spec.partition(":")[2].split(",")):
            key, _, value = part.partition("=")
            if key not in ("operations", "digits") or not value.isdigit():
                raise TaskFormatError(
                    f"bad arithmetic option {part!r}; use arithmetic:operations=N,digits=M"
                )
            options[key] = int(value)
        return arithmetic(num_problems or 20, seed=seed, **options)
    path = Path(spec)
    if path.suffix == ".jsonl":
        task = load_jsonl(path)
    elif path.suffix == ".json" or path.is_dir():
        task = load_bigbench(path)
    else:
        raise TaskFormatError(
            f"unknown task {spec!r}: give a .jsonl file, a BIG-bench task.json (or its "
            "directory), or 'arithmetic[:operations=N,digits=M]'"
        )
    return task.head(num_problems)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise TaskFormatError(f"cannot read task file {path}: {error.strerror}") from None


def _references(value, where: str) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int | float) for v in values):
        raise TaskFormatError(f"{where}: an answer must be a string, a number or a list of them")
    texts = [str(v) for v in values]
    return tuple(HASHES.findall(t)[-1].strip() if "####" in t else t for t in texts)


def _task(name: str, problems: list[Problem], path: Path) -> Task:
    if not problems:
        raise TaskFormatError(f"{path} holds no problems")
    return Task(name, tuple(problems))
