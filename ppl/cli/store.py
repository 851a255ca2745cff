"""Resumable runs: the finished results of a long run, one JSON record per key, in a directory.

Each finished unit of work (a problem, or one engine run of a benchmark) is
written as soon as it finishes, atomically, so an interrupted run loses
nothing it had finished and a rerun does only what is missing. A unit that
failed leaves an error record, which the next finished result removes. The
store also keeps the configuration the results belong to, and refuses to mix
results of a different configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ppl.errors import InvalidArgumentError, SerializationError
from ppl.files import write_atomic

CONFIG_FILE = "config.json"


class RunStore:
    """Records by key under ``directory``; ``layout`` places a key's record file.

    ``layout`` is a ``str.format`` pattern with ``{key}``: ``"{key}.json"``
    (one file per key, the default) or ``"{key}/result.json"`` (one directory
    per key, whose result file is written last).

    Example:
        >>> import tempfile
        >>> store = RunStore(tempfile.mkdtemp())
        >>> store.save("q1", {"answer": "4"})
        >>> store.load("q1"), store.load("q2"), list(store)
        ({'answer': '4'}, None, ['q1'])
    """

    def __init__(self, directory: str | os.PathLike, *, layout: str = "{key}.json"):
        self.directory = Path(directory)
        self.layout = layout

    def path(self, key: str) -> Path:
        """Where the record of ``key`` is (or will be) written."""
        return self.directory / self.layout.format(key=key)

    def load(self, key: str) -> dict[str, Any] | None:
        """The finished record of ``key``; None when it is missing or unreadable."""
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def save(self, key: str, record: Mapping[str, Any]) -> None:
        """Write the record of ``key`` atomically and drop its error record, if any."""
        try:
            text = json.dumps(record, allow_nan=True)
        except (TypeError, ValueError) as error:
            raise SerializationError(
                f"the result of {key!r} is not JSON-serializable: {error}"
            ) from error
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)
        self._error_path(key).unlink(missing_ok=True)

    def save_error(self, key: str, record: Mapping[str, Any]) -> None:
        """Record why ``key`` failed; a later ``save`` replaces it."""
        path = self._error_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, allow_nan=True))

    def __iter__(self) -> Iterator[str]:
        """The keys with a finished record, in sorted order."""
        pattern = self.layout.format(key="*")
        suffix = self.layout.format(key="")
        for path in sorted(self.directory.glob(pattern)):
            relative = path.relative_to(self.directory).as_posix()
            key = relative.removesuffix(suffix)
            finished = relative != CONFIG_FILE and not key.endswith(".error")
            if key != relative and finished and self.load(key) is not None:
                yield key

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Record ``config`` in a new store, or refuse one whose results used another.

        Example:
            >>> import tempfile
            >>> store = RunStore(tempfile.mkdtemp())
            >>> store.check_config({"task": "arithmetic"})
            >>> store.check_config({"task": "gsm8k"})
            Traceback (most recent call last):
            ...
            ppl.errors.InvalidArgumentError: ... holds runs of a different configuration \
(differs in task); use another --out directory
        """
        path = self.directory / CONFIG_FILE
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(dict(config), indent=2))
            return
        recorded = json.loads(path.read_text())
        differing = [k for k, v in config.items() if recorded.get(k) != v]
        if differing:
            raise InvalidArgumentError(
                f"{self.directory} holds runs of a different configuration (differs in "
                f"{', '.join(differing)}); use another --out directory"
            )

    def _error_path(self, key: str) -> Path:
        path = self.path(key)
        return path.with_name(f"{path.stem}.error{path.suffix}")
