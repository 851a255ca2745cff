"""Task suites: loaders, the arithmetic generator, answer extraction and normalization."""

from __future__ import annotations

import json
import re

import pytest

import ppl
from ppl.answers import extract_answer, normalize_answer
from ppl.cli.tasks import (
    Problem,
    Task,
    arithmetic,
    load_bigbench,
    load_jsonl,
    load_task,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 * 4 = 12\n12 + 1 = 13\nAnswer: 13.", "13"),
        ("answer is 1,250 dollars, not 7", "1,250"),
        ("The answer: $-4 overall, step 9", "-4"),
        ("so 5 + 5 = 10\n#### 10", "10"),
        ("we get \\boxed{3/4} then 12", "3/4"),
        ("Answer: 7\nlater text 9 then Answer: 8", "8"),
        ("first 2, then 2.5", "2.5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_numeric_answers(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reasoning...\nAnswer: Paris\n", "Paris"),
        ("#### blue whale", "blue whale"),
        ("  just this  ", "just this"),
    ],
)
def test_extract_text_answers(text, expected):
    assert extract_answer(text, numeric=False) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", "7"),
        ("7.0", "7"),
        ("007", "7"),
        ("-3.50", "-7/2"),
        ("1,000", "1000"),
        ("$12", "12"),
        ("50%", "50"),
        ("6/4", "3/2"),
        ("12.", "12"),
        ("twelve", "twelve"),
    ],
)
def test_normalize_numbers(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [('"The  Blue Whale."', "the blue whale"), ("Yes!", "yes"), ("(B)", "b"), ("3.0", "3.0")],
)
def test_normalize_text(text, expected):
    assert normalize_answer(text, numeric=False) == expected


def test_numeric_task_judges_by_value():
    task = Task("t", (Problem("0", "q", ("1000",)), Problem("1", "q", ("2.5", "5/2"))))
    assert task.numeric
    assert task.is_correct(task.problems[0], "so 10 * 100 = 1,000\nAnswer: 1,000")
    assert task.is_correct(task.problems[0], 1000)
    assert task.is_correct(task.problems[1], "Answer: 2.50")
    assert not task.is_correct(task.problems[0], "Answer: 100")
    assert not task.is_correct(task.problems[0], None)
    assert not task.is_correct(task.problems[0], "I do not know")


def test_text_task_judges_normalized_strings():
    task = Task("t", (Problem("0", "capital?", ("Paris", "paris, france")),))
    assert not task.numeric
    assert task.is_correct(task.problems[0], "Answer: PARIS.")
    assert task.is_correct(task.problems[0], "Paris, France")
    assert not task.is_correct(task.problems[0], "Answer: Lyon")


# --- loaders ---------------------------------------------------------------------------


def write_lines(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_load_jsonl_gsm8k_style(tmp_path):
    path = write_lines(
        tmp_path / "gsm.jsonl",
        [
            {"question": "Q1", "answer": "3 * 4 = 12 <<3*4=12>>\n#### 12"},
            "",
            {"question": "Q2", "answer": 7, "id": "second"},
            {"question": "Q3", "answer": ["4", "four"]},
        ],
    )
    task = load_jsonl(path)
    assert task.name == "gsm"
    assert [p.answers for p in task] == [("12",), ("7",), ("4", "four")]
    assert [p.id for p in task] == ["1", "second", "4"]
    assert task.problems[0].question == "Q1"
    custom = write_lines(tmp_path / "c.jsonl", [{"prompt": "Q", "target": "x"}])
    assert load_jsonl(custom, question_key="prompt", answer_key="target").problems[0].answers == (
        "x",
    )


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"question": "q", "answer": "1"}', "{not json"], r"bad\.jsonl:2: not valid JSON"),
        (['{"question": "q"}'], r"bad\.jsonl:1: .*'answer'"),
        (['{"question": "q", "answer": {"a": 1}}'], "must be a string"),
        (["", "  "], "holds no problems"),
    ],
)
def test_load_jsonl_errors(tmp_path, lines, match):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ppl.TaskFormatError, match=match):
        load_jsonl(path)


def test_missing_task_file(tmp_path):
    with pytest.raises(ppl.TaskFormatError, match="cannot read"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_load_bigbench(tmp_path):
    directory = tmp_path / "my_task"
    directory.mkdir()
    (directory / "task.json").write_text(
        json.dumps(
            {
                "name": "my_task",
                "examples": [
                    {"input": "2 + 2 =", "target": "4"},
                    {"input": "Colour of sky?", "target": ["blue", "azure"]},
                    {"input": "Pick", "target_scores": {"cat": 0, "dog": 1, "wolf": 1}},
                ],
            }
        )
    )
    task = load_bigbench(directory)
    assert task.name == "my_task"
    assert [p.answers for p in task] == [("4",), ("blue", "azure"), ("dog", "wolf")]
    assert load_task(str(directory / "task.json")).problems == task.problems


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"name": "x"}, "'examples' list"),
        ({"examples": [{"target": "1"}]}, "no 'input'"),
        ({"examples": [{"input": "q"}]}, "neither 'target'"),
    ],
)
def test_load_bigbench_errors(tmp_path, data, match):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ppl.TaskFormatError, match=match):
        load_bigbench(path)


# --- arithmetic generator ----------------------------------------------------------------

WORDS = {"Add": "+", "Subtract": "-", "Multiply by": "*"}


def solve(question: str) -> tuple[int, list[str]]:
    """Recompute a generated question from its text; also return its operands."""
    single = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question)
    if single:
        a, op, b = single.groups()
        steps = [(op, b)]
        start = a
    else:
        start = re.match(r"Start with (\d+)\.", question).group(1)
        steps = [
            (WORDS[w], n) for w, n in re.findall(r"(Add|Subtract|Multiply by) (\d+)\.", question)
        ]
    value = int(start)
    for op, operand in steps:
        assert op != "-" or int(operand) <= value
        value = {"+": value + int(operand), "-": value - int(operand), "*": value * int(operand)}[
            op
        ]
    return value, [start] + [n for _, n in steps]


@pytest.mark.parametrize(("operations", "digits"), [(1, 1), (3, 1), (2, 2), (4, 3)])
def test_arithmetic_answers_are_exact_and_follow_the_difficulty(operations, digits):
    task = arithmetic(40, operations=operations, digits=digits, seed=3)
    assert task.name == f"arithmetic-ops{operations}-digits{digits}"
    assert len(task) == 40 and task.numeric
    for problem in task:
        value, numbers = solve(problem.question)
        assert problem.answers == (str(value),)
        assert value >= 0
        assert len(numbers) == operations + 1
        assert all(len(n) == digits for n in numbers)
    operators = {op for p in task for op in re.findall(r"[-+*]|Add|Subtract|Multiply", p.question)}
    assert len(operators) >= 3


def test_arithmetic_is_reproducible_by_seed():
    assert arithmetic(5, seed=1) == arithmetic(5, seed=1)
    assert arithmetic(5, seed=1) != arithmetic(5, seed=2)


def test_load_task_specs():
    assert load_task("arithmetic", num_problems=3) == arithmetic(3)
    assert load_task("arithmetic:operations=2,digits=2", num_problems=4, seed=5) == arithmetic(
        4, operations=2, digits=2, seed=5
    )
    assert len(load_task("arithmetic")) == 20
    with pytest.raises(ppl.TaskFormatError, match="bad arithmetic option"):
        load_task("arithmetic:ops=2")
    with pytest.raises(ppl.TaskFormatError, match="unknown task"):
        load_task("gsm8k")
    with pytest.raises(ppl.InvalidArgumentError, match="positive"):
        arithmetic(3, operations=0)


def test_load_task_keeps_the_first_problems(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(5)]
    )
    assert [p.question for p in load_task(str(path), num_problems=2)] == ["q0", "q1"]
