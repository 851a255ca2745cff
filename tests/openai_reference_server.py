"""A real OpenAI-compatible ``/v1/completions`` server over a local ``TransformersLM``.

It answers as vLLM does (stop strings cut from ``text`` but their tokens kept
in ``logprobs``, end-of-sequence tokens listed, ``echo`` with prompt
log-probabilities, ``return_tokens_as_token_ids``), with the model's or the
proposal's log-probabilities, so ``OpenAILM`` can be checked exactly against
the model behind it. Faults are switched on per server: a delay, prompts
answered late, a queue of error statuses, prompts that always fail or get
malformed JSON.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ppl
from ppl.sampler import Sampler, target_log_probs


class ReferenceServer:
    """Serve ``lm`` on 127.0.0.1 at a free port until ``stop()``."""

    def __init__(self, lm, *, logprobs: str = "raw", model: str = "tiny", owner: str = "vllm"):
        self.lm = lm
        self.logprobs = logprobs
        self.delay = 0.0
        self.slow_prompts: dict[str, float] = {}  # marker -> seconds its prompts wait
        self.statuses: collections.deque[int] = collections.deque()
        self.fail_prompts: tuple[str, ...] = ()
        self.malformed_prompts: tuple[str, ...] = ()
        self.requests = 0
        self.stopped = False
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's
                # algorithm and delayed acknowledgements add 40 ms per answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args):
                pass

            def parse_request(self):
                # A stopped server drops its open connections as a dead process does.
                if server.stopped:
                    self.close_connection = True
                    return False
                return super().parse_request()

            def do_GET(self):
                if self.path == "/v1/models":
                    card = {"id": model, "object": "model", "owned_by": owner}
                    self._send(200, {"object": "list", "data": [card]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                wait = server.delay + sum(
                    seconds
                    for marker, seconds in server.slow_prompts.items()
                    if marker in body["prompt"]
                )
                if wait:
                    time.sleep(wait)
                if server.statuses:
                    self._send(server.statuses.popleft(), {"error": "injected"})
                elif any(marker in body["prompt"] for marker in server.fail_prompts):
                    self._send(500, {"error": "injected"})
                elif any(marker in body["prompt"] for marker in server.malformed_prompts):
                    self._send_raw(200, b'{"choices": [{"text": ')
                elif self.path != "/v1/completions":
                    self._send(404, {"error": "not found"})
                else:
                    with server._lock:
                        answer = server.complete(body)
                    self._send(200, answer)

            def _send(self, status, payload):
                self._send_raw(status, json.dumps(payload).encode())

            def _send_raw(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def stop(self) -> None:
        self.stopped = True
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    # --- the completions endpoint ---------------------------------------------
    def _distributions(self, prompt_ids, ids, sampler):
        """The next-token log-probabilities before each token (model or sampled-from)."""
        lm = self.lm
        contexts = [lm.decode(prompt_ids + ids[:k]) for k in range(len(ids))]
        log_p = lm.next_token_logprobs(contexts)
        if self.logprobs == "processed":
            log_p = target_log_probs(log_p, [sampler] * len(contexts))
        return log_p

    def _token_logprobs(self, prompt_ids, ids, sampler):
        """Each token's log-probability after the ones before it (model or sampled-from)."""
        log_p = self._distributions(prompt_ids, ids, sampler)
        return [float(log_p[k, token]) for k, token in enumerate(ids)]

    def _top_logprobs(self, prompt_ids, ids, sampler, k, as_ids):
        """vLLM's ``top_logprobs``: the top ``k`` plus the sampled token, -inf as -9999."""
        log_p = self._distributions(prompt_ids, ids, sampler)
        rows = []
        for position, token in enumerate(ids):
            top = log_p[position].topk(k).indices.tolist()
            keys = top + ([token] if token not in top else [])
            rows.append(
                {
                    f"token_id:{i}" if as_ids else self.lm.decode([i]): max(
                        float(log_p[position, i]), -9999.0
                    )
                    for i in keys
                }
            )
        return rows

    def complete(self, body: dict) -> dict:
        lm = self.lm
        prompt = body["prompt"]
        # vLLM's conventions: top_k=-1 and top_p=1 switch truncation off.
        top_k, top_p = int(body.get("top_k", -1)), float(body.get("top_p", 1.0))
        sampler = Sampler(
            float(body.get("temperature", 1.0)),
            top_k if top_k > 0 else None,
            top_p if top_p < 1 else None,
        )
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        request = ppl.StepRequest(
            prompt,
            stop=stop,
            max_tokens=body.get("max_tokens", 16),
            temperature=sampler.temperature,
            top_k=sampler.top_k,
            top_p=sampler.top_p,
        )
        (step,) = lm.sample_steps([request], seed=body.get("seed", 0))
        prompt_ids = list(lm.encode(prompt))
        ids = list(step.token_ids)
        values = self._token_logprobs(prompt_ids, ids, sampler)
        as_ids = body.get("return_tokens_as_token_ids")
        top = None
        if body.get("logprobs", 0) >= 1 and not body.get("echo"):
            top = self._top_logprobs(prompt_ids, ids, sampler, body["logprobs"], as_ids)
        text = step.text
        hit = [text.find(s) for s in stop if s in text]
        if hit:
            text = text[: min(hit)]
        if body.get("echo"):
            echoed = [None] + self._token_logprobs(prompt_ids[:1], prompt_ids[1:], Sampler())
            ids, values, text = prompt_ids + ids, echoed + values, prompt + text
        pieces = [f"token_id:{i}" if as_ids else lm.decode([i]) for i in ids]
        offsets, position = [], 0
        for i in ids:
            offsets.append(position)
            position += len(lm.decode([i]))
        finished = step.finished or bool(hit)
        return {
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": {
                        "tokens": pieces,
                        "token_logprobs": values,
                        "text_offset": offsets,
                        "top_logprobs": top,
                    },
                    "finish_reason": "stop" if finished else "length",
                }
            ],
        }
