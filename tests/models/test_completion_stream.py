"""Merging a streamed completion, read until the step has ended."""

import asyncio
import json

import pytest

from models.completion_stream import merged_answer
from ppl.errors import BadResponse


def chunk(text, finish_reason=None, logprob=-0.5):
    entry = {"id": 7, "token": text, "logprob": logprob}
    choice = {"text": text, "logprobs": {"content": [entry]}, "finish_reason": finish_reason}
    return "data: " + json.dumps({"choices": [choice]})


def merge(lines, ended=lambda text: False):
    read = []

    async def source():
        for line in lines:
            read.append(line)
            yield line

    return asyncio.run(merged_answer(source(), ended)), len(read)


def test_reading_stops_at_the_chunk_that_ends_the_step():
    lines = [chunk("a"), chunk("b."), chunk("c"), chunk("", "length")]
    answer, read = merge(lines, lambda text: "." in text)
    (choice,) = answer["choices"]
    assert read == 2 and choice["text"] == "ab." and choice["finish_reason"] is None
    assert [e["logprob"] for e in choice["logprobs"]["content"]] == [-0.5, -0.5]


def test_the_whole_stream_keeps_the_finish_reason_and_skips_other_lines():
    usage = "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 2}})
    lines = [": keep-alive", chunk("a"), chunk("b", "length"), usage, "data: [DONE]", chunk("x")]
    answer, read = merge(lines)
    assert read == 5
    assert answer["choices"][0]["text"] == "ab"
    assert answer["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("line", ["data: {not json", 'data: {"error": "overloaded"}'])
def test_a_malformed_chunk_is_a_bad_response(line):
    with pytest.raises(BadResponse, match="malformed chunk"):
        merge([chunk("a"), line])
