"""A streamed completion read until the step has ended, merged into one answer.

A server that cannot be told where a step ends (llama.cpp's ``llama-server``
drops a stop string's tokens and their log-probabilities from its answer)
is asked to stream instead: the client reads tokens as they come, and closes
the stream once the text holds a stop string. Closing the connection makes
the server stop decoding that request, so it generates about as many tokens
as the step keeps, not ``max_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from ppl.errors import BadResponse


async def merged_answer(lines: AsyncIterator[str], ended: Callable[[str], bool]) -> dict:
    """The server-sent ``data:`` chunks of one completion, merged until ``ended(text)``.

    Returns an answer in the non-streamed shape: ``choices[0]`` with the
    concatenated ``text``, the ``logprobs.content`` entries in order and the
    last ``finish_reason`` (None when the client stopped reading first).

    Example:
        >>> import asyncio
        >>> async def chunks():
        ...     for piece in ("Hi", ".", " Bye"):
        ...         entry = {"id": 0, "token": piece, "logprob": -1.0}
        ...         choice = {"text": piece, "logprobs": {"content": [entry]}}
        ...         yield "data: " + json.dumps({"choices": [choice]})
        >>> answer = asyncio.run(merged_answer(chunks(), lambda text: "." in text))
        >>> answer["choices"][0]["text"], len(answer["choices"][0]["logprobs"]["content"])
        ('Hi.', 2)
    """
    text, entries, finish_reason = "", [], None
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            break
        choice = _first_choice(data)
        if choice is None:  # e.g. a closing chunk that only reports usage
            continue
        text += choice.get("text") or ""
        entries += (choice.get("logprobs") or {}).get("content") or []
        finish_reason = choice.get("finish_reason") or finish_reason
        if ended(text):
            break
    choice = {"text": text, "logprobs": {"content": entries}}
    return {"choices": [{**choice, "finish_reason": finish_reason}]}


def _first_choice(data: str) -> dict | None:
    try:
        choices = json.loads(data)["choices"]
        return choices[0] if choices else None
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BadResponse(f"malformed chunk in a streamed completion: {data[:300]!r}") from error
