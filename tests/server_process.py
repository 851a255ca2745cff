"""Server processes for the integration tier: a free port, start-up, and a clean stop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import ppl


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: Sequence[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - the server process owns it
    return subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT)


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(
    command: Sequence[str], log_path: Path, wait_until_ready: Callable[[], None], name: str
) -> Iterator[subprocess.Popen]:
    """The server process while the block runs; the test fails with its log if it never answers."""
    process = start_server(command, log_path)
    try:
        wait_until_ready()
        yield process
    except ppl.ServerUnavailable:
        pytest.fail(f"{name} did not start:\n{log_path.read_text()[-2000:]}")
    finally:
        stop_server(process)
