"""Load a page in headless Chromium and report console errors, over the DevTools protocol.

Chromium is driven through ``--remote-debugging-pipe`` (file descriptors 3
and 4, NUL-separated JSON messages), so no websocket library or open port is
needed. ``chromium_or_reason`` finds the browser, installing Debian's
``chromium`` package with apt-get when it is missing and the tests run as root.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]


def find_chromium() -> str | None:
    configured = os.environ.get("PPL_CHROMIUM")
    if configured:
        return shutil.which(configured)
    return next((path for path in map(shutil.which, NAMES) if path), None)


def chromium_or_reason() -> tuple[str | None, str]:
    """The browser's path, or None and why it is unavailable."""
    found = find_chromium()
    if found:
        return found, ""
    if os.environ.get("PPL_NO_BROWSER_INSTALL"):
        return None, "chromium is not installed and PPL_NO_BROWSER_INSTALL is set"
    if not shutil.which("apt-get"):
        return None, "chromium is not installed and there is no apt-get to install it"
    if os.geteuid() != 0:
        return None, "chromium is not installed; installing it needs root: apt-get install chromium"
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    failure = ""
    for command in (INSTALL, ["apt-get", "update"], INSTALL):
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=900, env=environment
            )
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(command)}` timed out"
        if command is INSTALL and done.returncode == 0:
            found = find_chromium()
            if found:
                return found, ""
        failure = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return None, f"could not install chromium with apt-get: {failure}"


@dataclass
class PageLoad:
    """What loading a page produced: problems reported by the browser, and evaluated values."""

    errors: list[str] = field(default_factory=list)
    values: Any = None


class _Pipe:
    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def call(self, method: str, params=None, session=None, timeout: float = 30.0) -> dict:
        sent = self.send(method, params, session)
        reply = self.wait(lambda m: m.get("id") == sent, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def wait(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self.read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self.buffer += chunk

    def drain(self, seconds: float) -> None:
        try:
            self.wait(lambda m: False, seconds)
        except TimeoutError:
            pass


def load_page(chromium: str, path: Path, expression: str, timeout: float = 60.0) -> PageLoad:
    """Open ``path`` in headless Chromium, evaluate ``expression`` (JSON-returning JS) after load.

    ``errors`` collects console errors and assertions, uncaught exceptions and
    browser log entries of level error (failed loads, blocked resources).
    """
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()
    profile = tempfile.mkdtemp(prefix="ppl-chromium-")
    log = tempfile.TemporaryFile()

    def attach_pipes():  # runs in the child: the protocol uses fds 3 (in) and 4 (out)
        read_copy, write_copy = os.dup(to_browser_read), os.dup(from_browser_write)
        os.dup2(read_copy, 3)
        os.dup2(write_copy, 4)

    process = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        preexec_fn=attach_pipes,
        close_fds=False,
    )
    os.close(to_browser_read)
    os.close(from_browser_write)
    pipe = _Pipe(from_browser_read, to_browser_write)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        session = pipe.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        pipe.wait(
            lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
            timeout,
        )
        pipe.drain(0.5)
        result = pipe.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=session,
        )
        pipe.drain(0.2)
        load = PageLoad(values=json.loads(result["result"]["value"]))
        for event in pipe.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "assert",
            ):
                load.errors.append(
                    "console: " + " ".join(str(a.get("value", a)) for a in params["args"])
                )
            elif event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                load.errors.append(
                    f"exception: {details.get('exception', {}).get('description', details)}"
                )
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                load.errors.append(f"log: {params['entry']['text']}")
        pipe.send("Browser.close")
        process.wait(timeout=30)
        return load
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(from_browser_read)
        os.close(to_browser_write)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
