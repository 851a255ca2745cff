"""``OpenAILM``: a model behind an OpenAI-compatible ``/v1/completions`` server.

vLLM, SGLang and llama.cpp's servers shard, batch and prefix-cache the model;
this client only sends requests. ``sample_steps`` sends one completion request
per particle (a whole step: until a stop string, end of sequence or
``max_tokens``), concurrently and bounded by ``max_concurrency``; identical
and shared prefixes are sent in a stable, sorted order so the server's prefix
cache serves them. ``Chat`` contexts are rendered locally with the model's
chat template and sent as completion prompts, so continuing a partial
assistant message is exact.

Weights are exact only where the server says enough. A step's target is its
sampler (temperature, top-k, top-p; ``ppl.sampler``), and the server is asked
to sample with exactly those settings, every other transform off
(``ServerProfile.sampling``):

- The model itself (temperature 1, no truncation) is exact on every server:
  the proposal is the target and ``logq == logp`` is the sum of the returned
  token log-probabilities.
- A tempered or truncated target needs the log-probabilities of the
  distribution the server samples from: SGLang, and vLLM with
  ``--logprobs-mode processed_logprobs``, return them
  (``logprobs="processed"``); servers that return the untempered model's
  (``logprobs="raw"``: vLLM's default, llama.cpp) raise ``CapabilityError``.
- ``proposal_temperature`` works with the untempered model as the target:
  ``logq`` comes with the sample (processed log-probabilities) and ``logp``
  from an ``echo`` scoring request. With a tempered or truncated target it
  raises ``CapabilityError``: no server reports the target's log-probability
  of a token drawn at another temperature.
- ``score_steps`` uses ``echo`` with ``logprobs``; servers whose echoed
  log-probabilities are not aligned with the prompt (llama-cpp-python's)
  raise ``CapabilityError``.
- Logits processors run inside the server and cannot be sent:
  ``CapabilityError``.
- ``top_logprobs=k`` asks for ``logprobs=k``: the server's top log-probabilities
  are those of the distribution it samples from, the step's target wherever
  the step itself is exact; with ``proposal_temperature`` they are not:
  ``CapabilityError``.

Transient failures (connection errors, timeouts, 429 and 5xx answers) are
retried with exponential backoff and jitter. A request that still fails fails
its particle only: its step gets ``logp = -inf`` (so the particle's weight is
zero), the failure is appended to ``OpenAILM.failures`` and counted in
``stats.failed_requests``. When every request of a call fails the call raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np

from models.completion_stream import merged_answer
from models.server_slots import ServerSlots
from models.token_lm import TokenLM
from ppl.errors import (
    BackendError,
    BadResponse,
    CapabilityError,
    InvalidArgumentError,
    ServerUnavailable,
    ServerUnreachable,
)
from ppl.lm import LM, Context, LMStats, ScoreRequest, StepRequest, StepResult
from ppl.values import Chat

_TOKEN_ID_PREFIX = "token_id:"


@dataclass(frozen=True)
class ServerProfile:
    """What a family of servers does with sampling parameters and log-probabilities.

    ``sampling``: request fields that turn off every sampling transform
    (top-k/top-p/min-p, penalties) so that the proposal is exactly
    ``softmax(logits / temperature)`` unless a step sets ``top_k``/``top_p``,
    plus any field the client relies on. ``logprobs``: ``"raw"`` when the
    returned token log-probabilities are the model's at temperature 1,
    ``"processed"`` when they are those of the distribution sampled from. ``echo_scoring``: ``echo``
    with ``logprobs`` returns each prompt token's log-probability given the
    tokens before it. ``reports_eos``: a generated end-of-sequence token is
    listed, with its log-probability, among the returned tokens.
    ``sends_stop``: stop strings are sent to the server; when False (a server
    that drops the stop string's tokens and their log-probabilities from its
    answer) the client streams the completion, closes it once a stop string
    appears (the server then stops decoding it) and cuts it after the token
    that completes the stop string, which is exact (a token's log-probability
    depends only on the tokens before it) at the cost of the one or two tokens
    the server generates before it notices.

    Example:
        >>> replace(SERVERS["vllm"], logprobs="processed").logprobs
        'processed'
    """

    sampling: Mapping[str, object]
    logprobs: str = "raw"
    echo_scoring: bool = True
    reports_eos: bool = True
    sends_stop: bool = True


_NO_PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0}

SERVERS: dict[str, ServerProfile] = {
    # vLLM: token ids in the answer make token_ids exact.
    "vllm": ServerProfile(
        {
            "top_p": 1.0,
            "top_k": -1,
            "min_p": 0.0,
            "repetition_penalty": 1.0,
            "return_tokens_as_token_ids": True,
            **_NO_PENALTIES,
        },
        logprobs="raw",
    ),
    # SGLang returns temperature-scaled log-probabilities unless started with
    # SGLANG_RETURN_ORIGINAL_LOGPROB=1 (then pass logprobs="raw").
    "sglang": ServerProfile(
        {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, **_NO_PENALTIES},
        logprobs="processed",
    ),
    # llama-cpp-python's server (python -m llama_cpp.server): log-probabilities
    # come from the raw logits; its echoed ones are shifted by one position and
    # a generated end-of-sequence token is not listed.
    "llama-cpp-python": ServerProfile(
        {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, **_NO_PENALTIES},
        logprobs="raw",
        echo_scoring=False,
        reports_eos=False,
    ),
    # llama.cpp's C++ llama-server (parallel slots, continuous batching, prompt
    # cache): token ids come with the log-probabilities; a stop string's tokens
    # are dropped from the answer, so stops are applied by the client, which
    # streams and closes the stream there.
    "llama.cpp": ServerProfile(
        {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, **_NO_PENALTIES},
        logprobs="raw",
        echo_scoring=False,
        reports_eos=False,
        sends_stop=False,
    ),
}


@dataclass(slots=True)
class OpenAIStats(LMStats):
    """``LMStats`` plus the HTTP work: requests sent, retries, requests that failed for good."""

    requests: int = 0
    retries: int = 0
    failed_requests: int = 0
    peak_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class RequestFailure:
    """A request that failed after all retries; its particle's step got weight zero."""

    context: str
    error: str


@dataclass(slots=True)
class _Sample:
    """One parsed completion."""

    token_ids: tuple[int, ...]
    text: str
    log_probs: list[float]
    finished: bool


class OpenAILM(LM, ServerSlots):
    """A model served over an OpenAI-compatible ``/v1/completions`` endpoint.

    ``base_url`` ends with ``/v1`` (as for the OpenAI client); ``model`` is the
    served model's name (default: the one model the server lists);
    ``tokenizer`` is a Hugging Face tokenizer, or a local directory holding
    one, for the served model: it renders chat templates, decodes token ids
    and knows the end-of-sequence tokens (``eos_token_ids`` overrides them).
    By default it is loaded from the served model's name when that is a local
    directory, a local GGUF file, or a model in the Hugging Face cache.
    ``server`` names a ``ServerProfile`` (``"vllm"``, ``"sglang"``,
    ``"llama-cpp-python"``, ``"llama.cpp"``) or is one; ``"auto"`` reads it from the
    ``owned_by`` field of ``GET /models``. ``logprobs`` overrides the
    profile's log-probability mode. ``sampling`` adds request fields (they override
    the profile's). ``max_concurrency`` bounds the requests in flight; by default
    it is twice the server's slots where the server reports them (llama.cpp's
    ``GET /props``), so a slot that frees finds a request already queued, and
    64 otherwise. ``timeout`` is per request in seconds; a request is tried
    ``1 + retries`` times, waiting ``backoff * 2**attempt`` seconds (with
    jitter) between tries. Engines send each particle's step as soon as the
    particle is ready (``models.server_slots``), so the server's continuous
    batching keeps its slots busy.

    Example (``server_url`` serves a tiny model over ``a b c e`` as vLLM does, and
    ``model_dir`` holds its tokenizer; for a real one, e.g.
    ``OpenAILM("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct",
    tokenizer="/models/qwen2.5-7b-instruct", server="vllm", max_concurrency=64)``):
        >>> with OpenAILM(server_url, tokenizer=model_dir, server="vllm") as remote:
        ...     ppl.smc(program, remote, "a", num_particles=8, seed=0)
        <Posterior smc runs=1 particles=8 ess=7.0 log_evidence=-0.134>
    """

    # Same rendering as the local backends: the template's open assistant turn
    # followed by the assistant text verbatim.
    render = TokenLM.render

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        tokenizer=None,
        server: str | ServerProfile = "auto",
        logprobs: str | None = None,
        eos_token_ids: Sequence[int] | None = None,
        api_key: str | None = None,
        sampling: Mapping[str, object] | None = None,
        max_concurrency: int | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ):
        _check_options(server, logprobs, max_concurrency, timeout, retries, backoff)
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.sampling = dict(sampling or {})
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.stats = OpenAIStats()
        self.failures: list[RequestFailure] = []
        self._encoded: dict[Context, tuple[int, ...]] = {}
        self._piece_ids: dict[str, int] | None = None
        self._reset_connection()
        if model is None or server == "auto" or tokenizer is None:
            model, owner = self._served_model(model)
            if server == "auto":
                server = _server_of(owner, self.base_url)
            if tokenizer is None:
                tokenizer = _load_tokenizer(model)
        self.model = model
        self.server = SERVERS[server] if isinstance(server, str) else server
        if logprobs is not None:
            self.server = replace(self.server, logprobs=logprobs)
        if isinstance(tokenizer, str | Path):
            tokenizer = _load_tokenizer(str(tokenizer))
        self.tokenizer = tokenizer
        if eos_token_ids is None:
            eos_token_ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)

    def _reset_connection(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._jitter = random.Random()
        self._reset_slots()

    # A client pickles without its connection (e.g. to Ray workers) and
    # reconnects on first use.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in (
            *("_loop", "_thread", "_client", "_semaphore", "_in_flight", "_jitter"),
            *("_requests", "_next_ticket", "_answered"),
        ):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_connection()

    def close(self) -> None:
        """Close the connections and stop the client's event-loop thread."""
        if self._loop is None:
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._reset_connection()

    def __enter__(self) -> OpenAILM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- text <-> tokens ------------------------------------------------------
    def encode(self, context: Context) -> tuple[int, ...]:
        """Token ids of ``context`` as the local backends tokenize it."""
        return TokenLM.encode(self, context)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _piece_to_id(self, piece: str) -> int | None:
        """The token whose text is ``piece``, when exactly one token decodes to it."""
        if piece.startswith(_TOKEN_ID_PREFIX):
            return int(piece[len(_TOKEN_ID_PREFIX) :])
        if self._piece_ids is None:
            texts = self.tokenizer.batch_decode(
                [[i] for i in range(len(self.tokenizer))],
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
            counts: dict[str, int] = {}
            for text in texts:
                counts[text] = counts.get(text, 0) + 1
            self._piece_ids = {
                text: i
                for i, text in enumerate(texts)
                if counts[text] == 1 and text and "\ufffd" not in text
            }
        return self._piece_ids.get(piece)

    # --- the backend contract -------------------------------------------------
    def sample_steps(
        self, requests: Sequence[StepRequest], *, seed: int | None = None
    ) -> list[StepResult]:
        """One completion request per step, sent concurrently; a failed request fails its step.

        Per-request seeds are drawn from ``seed``, so a call is reproducible
        wherever the server's sampling is deterministic for a seed.
        """
        if not requests:
            return []
        for request in requests:
            self._check_exact(request)
        self.stats.sample_calls += 1
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(requests))
        prompts = [self.render(r.context) for r in requests]
        outcomes = self._run(self._sample_all(requests, prompts, [int(s) for s in seeds]))
        for outcome in outcomes:
            if isinstance(outcome, CapabilityError):
                raise outcome
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if len(errors) == len(requests):
            error = errors[0]
            error.add_note(f"all {len(requests)} requests of this call failed")
            raise error
        results = []
        for prompt, outcome in zip(prompts, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._fail(prompt, outcome)
                results.append(StepResult("", (), -math.inf, 0.0, True))
            else:
                results.append(outcome)
        return results

    def _fail(self, prompt: str, error: BaseException) -> None:
        self.stats.failed_requests += 1
        self.failures.append(RequestFailure(prompt[-200:], f"{type(error).__name__}: {error}"))

    def score_steps(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Log-probability of each continuation by ``echo`` (the model itself); raises on error."""
        if not requests:
            return []
        for request in requests:
            if not request.sampler.is_model:
                raise CapabilityError(
                    f"scoring under {_describe(request.sampler)}: servers echo the untempered "
                    "model's log-probabilities only; score with a local backend"
                )
        if not self.server.echo_scoring:
            raise CapabilityError(
                "this server cannot score given text (its echoed log-probabilities are not "
                "aligned with the prompt); use a server that can (vLLM, SGLang) or a local "
                "backend for re-scoring"
            )
        self.stats.score_calls += 1
        outcomes = self._run(self._score_all(requests))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Poll ``GET /models`` until the server answers; ``ServerUnavailable`` after ``timeout``.

        Example (``server_url`` serves a tiny model; ``model_dir`` holds its tokenizer):
            >>> with OpenAILM(server_url, tokenizer=model_dir, server="vllm") as remote:
            ...     remote.wait_until_ready(timeout=10)
        """
        self._run(self._wait_until_ready(timeout))

    # --- checks ---------------------------------------------------------------
    def _check_exact(self, request: StepRequest) -> None:
        if request.logits_processor is not None:
            raise CapabilityError(
                "a logits processor cannot run inside an HTTP server; use a local backend "
                "(TransformersLM, LlamaCppLM) for steps with logits_processor"
            )
        if request.top_logprobs and not request.proposal_is_target:
            raise CapabilityError(
                f"top_logprobs={request.top_logprobs} with proposal_temperature: servers report "
                "the top log-probabilities of the distribution they sample from, not of the "
                "step's target; drop proposal_temperature or use a local backend"
            )
        target = request.sampler
        if request.proposal_temperature is not None and not target.is_model:
            raise CapabilityError(
                f"proposal_temperature={request.proposal_temperature} with a tempered or "
                f"truncated target ({_describe(target)}): no server reports the target's "
                "log-probabilities of tokens sampled at another temperature; drop "
                "proposal_temperature (the server then samples from the target) or use a "
                "local backend"
            )
        if request.proposal_is_target and target.is_model:
            return  # exact on every server
        if self.server.logprobs == "raw":
            shaped = (
                _describe(target)
                if request.proposal_is_target
                else (f"temperature={request.proposal_temperature}")
            )
            raise CapabilityError(
                f"{shaped}: this server returns the untempered model's log-probabilities, "
                "not those of the distribution it samples from, so the step's weight cannot be "
                "computed; use temperature=1 without top_k/top_p, or a server that returns "
                "processed log-probabilities (vLLM --logprobs-mode processed_logprobs, SGLang) "
                "with logprobs='processed'"
            )
        if not request.proposal_is_target and not self.server.echo_scoring:
            raise CapabilityError(
                f"temperature={request.proposal_temperature} needs the model's "
                "log-probability from an echo request, which this server does not support"
            )

    # --- requests -------------------------------------------------------------
    def _run(self, coroutine):
        """Run ``coroutine`` on the client's own event loop (a daemon thread)."""
        return self._submit_coroutine(coroutine).result()

    def _submit_coroutine(self, coroutine) -> concurrent.futures.Future:
        """Schedule ``coroutine`` on the client's own event loop, started on first use."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="OpenAILM", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _ensure_client(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            if self.max_concurrency is None:
                self.max_concurrency = _default_concurrency(self.base_url, headers)
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=headers,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=self.max_concurrency),
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return self._client

    async def _post(
        self, path: str, body: dict | None, ended: Callable[[str], bool] | None = None
    ) -> dict:
        """POST ``body`` (GET when None), retrying transient failures; typed errors otherwise.

        With ``ended`` the answer is streamed and read until ``ended(text)``
        (``models.completion_stream``).
        """
        client = self._ensure_client()
        url = f"{self.base_url}{path}"
        error: BackendError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + self._jitter.random())
                await asyncio.sleep(delay)
            self.stats.requests += 1
            try:
                async with self._semaphore:
                    self._in_flight += 1
                    self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
                    try:
                        status, answer = await _exchange(client, path, body, ended)
                    finally:
                        self._in_flight -= 1
            except httpx.TimeoutException:
                error = ServerUnavailable(f"{url} did not answer within {self.timeout:g} s")
                continue
            except httpx.TransportError as transport_error:
                error = ServerUnreachable(f"cannot reach {url}: {transport_error!r}")
                continue
            if status == 429 or status >= 500:
                error = ServerUnavailable(f"{url} answered {status}: {answer[:300]}")
                continue
            if status >= 400:
                raise BadResponse(f"{url} rejected the request ({status}): {answer[:500]}")
            if isinstance(answer, str):
                raise BadResponse(f"{url} answered with malformed JSON: {answer[:200]!r}")
            return answer
        error.add_note(f"after {self.retries + 1} tries")
        raise error

    def _served_model(self, model: str | None) -> tuple[str, str | None]:
        """The model to use and its ``owned_by``, from ``GET /models``."""
        answer = self._run(self._post("/models", None))
        try:
            cards = [(card["id"], card.get("owned_by")) for card in answer["data"]]
        except (KeyError, TypeError) as error:
            raise BadResponse(f"GET {self.base_url}/models answered {str(answer)[:300]}") from error
        if model is not None:
            return model, dict(cards).get(model)
        if len(cards) != 1:
            raise InvalidArgumentError(
                f"{self.base_url} serves {[c for c, _ in cards]}; pass model= to choose one"
            )
        return cards[0]

    async def _wait_until_ready(self, timeout: float) -> None:
        client = self._ensure_client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        while loop.time() < deadline:
            try:
                response = await client.get("/models", timeout=min(self.timeout, 5.0))
                if response.status_code == 200:
                    return
                last = f"status {response.status_code}"
            except httpx.TransportError as error:
                last = repr(error)
            await asyncio.sleep(0.2)
        raise ServerUnavailable(f"{self.base_url} not ready after {timeout:g} s ({last})")

    def _body(self, prompt: str, context: Context, **fields) -> dict:
        body = {"model": self.model, "prompt": prompt, **self.server.sampling, **fields}
        if isinstance(context, Chat):
            # The rendered template already holds its special tokens.
            body["add_special_tokens"] = False
        body.update(self.sampling)
        return body

    async def _sample_all(
        self, requests: Sequence[StepRequest], prompts: list[str], seeds: list[int]
    ) -> list[StepResult | BaseException]:
        # Sorted prompts put shared prefixes next to each other for the server's cache.
        order = sorted(range(len(requests)), key=prompts.__getitem__)
        tasks = {
            j: asyncio.ensure_future(self._sample_one(requests[j], prompts[j], seeds[j]))
            for j in order
        }
        done = await asyncio.gather(*(tasks[j] for j in order), return_exceptions=True)
        outcomes: list = [None] * len(requests)
        for j, outcome in zip(order, done, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            outcomes[j] = outcome
        return outcomes

    async def _sample_one(self, request: StepRequest, prompt: str, seed: int) -> StepResult:
        fields = {
            "max_tokens": request.max_tokens,
            "temperature": request.proposal_scale,
            "seed": seed,
            "logprobs": max(1, request.top_logprobs),
        }
        if request.top_k is not None:
            fields["top_k"] = request.top_k
        if request.top_p is not None:
            fields["top_p"] = request.top_p
        ended = None
        if request.stop and self.server.sends_stop:
            fields["stop"] = list(request.stop)
        elif request.stop:  # streamed and closed at a stop string, so the server stops there
            ended = functools.partial(_holds_any, tuple(request.stop))
        body = self._body(prompt, request.context, **fields)
        answer = await self._post("/completions", body, ended)
        sample = self._parse_sample(answer, request)
        total = math.fsum(sample.log_probs)
        self.stats.tokens_generated += len(sample.token_ids)
        if request.proposal_is_target:
            logp = logq = total  # the server sampled from the target and reported it
        else:  # the untempered model, sampled at proposal_temperature (checked above)
            logq = total
            logp = await self._score_one(ScoreRequest(request.context, sample.token_ids))
        # One row per returned token, up to the cut after a stop string.
        top = _top_logprobs(answer["choices"][0]["logprobs"], request.top_logprobs)
        top = top[: len(sample.log_probs)]
        return StepResult(sample.text, sample.token_ids, logp, logq, sample.finished, top)

    def _parse_sample(self, answer: dict, request: StepRequest) -> _Sample:
        try:
            choice = answer["choices"][0]
            server_text = choice["text"]
            finish_reason = choice.get("finish_reason")
            pieces, values = _token_logprobs(choice["logprobs"])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise BadResponse(
                f"completion answer without choices[0].text/logprobs ({error!r}): "
                f"{str(answer)[:300]}"
            ) from error
        if len(pieces) != len(values) or not pieces:
            raise BadResponse(
                f"completion answer has {len(pieces)} tokens and {len(values)} log-probabilities"
            )
        if any(math.isnan(v) or v > 1e-4 for v in values):
            raise BadResponse(f"invalid token log-probabilities from the server: {values}")
        ids = [self._piece_to_id(p) for p in pieces]
        if not self.server.sends_stop and all(i is not None for i in ids):
            ids, values = self._cut_at_stop(ids, values, request.stop)
            pieces = pieces[: len(ids)]
            server_text = self.decode(ids)
        text = None
        if all(i is not None for i in ids):
            token_ids = tuple(ids)
            finished = token_ids[-1] in self.eos_token_ids
            text = self.decode(token_ids[:-1] if finished else token_ids)
            by_text = not pieces[0].startswith(_TOKEN_ID_PREFIX)
            if by_text and not text.startswith(server_text):
                text = None  # a piece's text named another token (e.g. a dropped space)
        if text is None:
            # Some piece is ambiguous (part of a UTF-8 sequence) or named another
            # token: rebuild the text from the server's text and the stop string
            # the pieces show; the token ids are the text's canonical tokenization.
            text = server_text + _stop_suffix("".join(pieces), request.stop)
            token_ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            finished = False
        stopped = any(s in text for s in request.stop)
        if finish_reason == "stop" and not finished and not stopped:
            # The step ended at an end-of-sequence token the answer does not list.
            raise CapabilityError(
                "the server ended a step at end-of-sequence without reporting that token's "
                "log-probability, so the step's weight cannot be exact (llama-cpp-python's "
                "server does this); end steps with stop strings, or use a server that reports "
                "it (vLLM, SGLang)"
            )
        return _Sample(token_ids, text, values, finished)

    def _cut_at_stop(self, ids: list[int], values: list[float], stop: tuple[str, ...]):
        """Tokens up to the first that ends the step: an end-of-sequence or a stop string's end."""
        for k, token in enumerate(ids):
            if token in self.eos_token_ids or (
                stop and any(s in self.decode(ids[: k + 1]) for s in stop)
            ):
                return ids[: k + 1], values[: k + 1]
        return ids, values

    async def _score_all(self, requests: Sequence[ScoreRequest]) -> list:
        return await asyncio.gather(*(self._score_one(r) for r in requests), return_exceptions=True)

    async def _score_one(self, request: ScoreRequest) -> float:
        if not request.token_ids:
            return 0.0
        prefix = self.render(request.context)
        continuation = self.decode(request.token_ids)
        prompt = prefix + continuation
        fields = {"max_tokens": 1, "temperature": 1.0, "seed": 0, "logprobs": 1, "echo": True}
        answer = await self._post("/completions", self._body(prompt, request.context, **fields))
        try:
            logprobs = answer["choices"][0]["logprobs"]
            pieces = list(logprobs["tokens"])
            values = list(logprobs["token_logprobs"])
            offsets = logprobs.get("text_offset") or _offsets(
                [self.decode([i]) if (i := self._piece_to_id(p)) is not None else p for p in pieces]
            )
        except (KeyError, IndexError, TypeError) as error:
            raise BadResponse(f"echo answer without logprobs ({error!r})") from error
        start, end = len(prefix), len(prompt)
        if start not in offsets:
            raise CapabilityError(
                "the server tokenized the context and the continuation across their boundary; "
                "text prompts cannot score these tokens exactly"
            )
        selected = [k for k, offset in enumerate(offsets) if start <= offset < end]
        ids = [self._piece_to_id(pieces[k]) for k in selected]
        if len(selected) != len(request.token_ids) or (
            all(i is not None for i in ids) and tuple(ids) != tuple(request.token_ids)
        ):
            raise CapabilityError(
                "the server tokenized the continuation's text differently from its token ids "
                "(a non-canonical tokenization); text prompts cannot score it exactly"
            )
        if any(values[k] is None for k in selected):
            raise BadResponse("echo answer lacks the log-probability of a continuation token")
        self.stats.tokens_scored += len(selected)
        return math.fsum(float(values[k]) for k in selected)


# ``owned_by`` in ``GET /models`` answers, by server family.
_OWNERS = {"vllm": "vllm", "sglang": "sglang", "me": "llama-cpp-python", "llamacpp": "llama.cpp"}


def _check_options(server, logprobs, max_concurrency, timeout, retries, backoff) -> None:
    if isinstance(server, str) and server != "auto" and server not in SERVERS:
        raise InvalidArgumentError(
            f"unknown server {server!r}; choose 'auto', one of {sorted(SERVERS)} "
            "or pass a models.ServerProfile"
        )
    if logprobs not in (None, "raw", "processed"):
        raise InvalidArgumentError(f"logprobs must be 'raw' or 'processed', got {logprobs!r}")
    if max_concurrency is not None and not (
        isinstance(max_concurrency, int) and max_concurrency >= 1
    ):
        raise InvalidArgumentError(
            f"max_concurrency must be a positive int, got {max_concurrency!r}"
        )
    if not timeout > 0 or retries < 0 or backoff < 0:
        raise InvalidArgumentError(
            f"need timeout > 0, retries >= 0 and backoff >= 0; got {timeout!r}, "
            f"{retries!r}, {backoff!r}"
        )


def _default_concurrency(base_url: str, headers: dict) -> int:
    """Twice the server's slots when it reports them (llama.cpp's ``/props``), else 64."""
    try:
        answer = httpx.get(base_url.removesuffix("/v1") + "/props", headers=headers, timeout=5)
        return max(2 * int(answer.json()["total_slots"]), 1)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return 64


def _holds_any(needles: tuple[str, ...], text: str) -> bool:
    return any(needle in text for needle in needles)


async def _exchange(
    client: httpx.AsyncClient, path: str, body: dict | None, ended: Callable[[str], bool] | None
) -> tuple[int, dict | str]:
    """One request: its status and its JSON answer, or the body's text when that is not JSON."""
    if body is not None and ended is not None:
        async with client.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code >= 400:
                return response.status_code, (await response.aread()).decode(errors="replace")
            return response.status_code, await merged_answer(response.aiter_lines(), ended)
    response = await (client.get(path) if body is None else client.post(path, json=body))
    if response.status_code >= 400:
        return response.status_code, response.text
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def _token_logprobs(logprobs: dict) -> tuple[list[str], list[float]]:
    """Token pieces and log-probabilities from either answer format.

    The completions format has ``tokens`` and ``token_logprobs``; llama.cpp's
    server answers in the chat format, a ``content`` list of ``{id, token,
    logprob}``, whose ids become ``token_id:`` pieces (exact token ids).
    """
    if "content" in logprobs:
        entries = logprobs["content"]
        return [f"{_TOKEN_ID_PREFIX}{e['id']}" for e in entries], [
            float(e["logprob"]) for e in entries
        ]
    return list(logprobs["tokens"]), [float(v) for v in logprobs["token_logprobs"]]


def _server_of(owner: str | None, base_url: str) -> str:
    if owner not in _OWNERS:
        raise InvalidArgumentError(
            f"cannot tell which server runs at {base_url} (its models are owned_by "
            f"{owner!r}); pass server= one of {sorted(SERVERS)} or a models.ServerProfile"
        )
    return _OWNERS[owner]


def _load_tokenizer(name: str):
    """A tokenizer from a local directory, a local GGUF file or the Hugging Face cache."""
    from transformers import AutoTokenizer

    path = Path(name)
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        if path.is_dir():
            return AutoTokenizer.from_pretrained(path)
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(
            f"no local tokenizer for {name!r} ({error}); pass tokenizer= a directory "
            "holding the served model's tokenizer"
        ) from error


def _describe(sampler) -> str:
    parts = [f"temperature={sampler.temperature}"]
    parts += [f"{k}={v}" for k in ("top_k", "top_p") if (v := getattr(sampler, k)) is not None]
    return ", ".join(parts)


def _stop_suffix(generated: str, stop: tuple[str, ...]) -> str:
    """From the earliest stop string in ``generated`` to its end ('' when none occurs)."""
    positions = [generated.find(s) for s in stop if s in generated]
    return generated[min(positions) :] if positions else ""


def _offsets(pieces: Sequence[str]) -> list[int]:
    offsets, position = [], 0
    for piece in pieces:
        offsets.append(position)
        position += len(piece)
    return offsets


def _top_logprobs(logprobs: dict, k: int) -> tuple[tuple[float, ...], ...]:
    """Per returned token, its ``k`` largest finite top log-probabilities, decreasing.

    Completions answers hold a ``{piece: logprob}`` dict per token; llama.cpp's
    chat-format ``content`` entries a list of ``{logprob}``. A server may add
    the sampled token to the top-k (vLLM), so only the ``k`` largest are kept;
    vLLM writes ``-inf`` (outside a truncated sampler's support) as -9999.
    """
    if k == 0:
        return ()
    try:
        if "content" in logprobs:
            rows = [[e["logprob"] for e in entry["top_logprobs"]] for entry in logprobs["content"]]
        else:
            rows = [list(row.values()) for row in logprobs["top_logprobs"]]
        values = [sorted(map(float, row), reverse=True) for row in rows]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        raise BadResponse(
            f"completion answer without top log-probabilities per token ({error!r}); the "
            "server must answer the logprobs=k field with top_logprobs"
        ) from error
    return tuple(tuple(v for v in row[:k] if -9999.0 < v <= 0.0) for row in values)
