"""Writing files so that a reader sees the old content or the new, never part of either.

The content goes to a temporary file in the target's directory (a rename is
atomic only within one file system), is flushed to disk, and is then renamed
over the target with ``os.replace``. An interrupted write leaves the target as
it was and removes the temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

Content = str | bytes | Callable[[Path], None]


def write_atomic(path: str | os.PathLike, content: Content) -> None:
    """Replace ``path`` with ``content``: text, bytes, or ``write(temporary_path)``.

    A callable writes the temporary file itself (for writers that take a
    path, such as ``to_netcdf``). The file gets the usual mode (``0o666``
    less the umask), not the owner-only mode of a temporary file.

    Example:
        >>> import pathlib, tempfile
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "result.json"
        >>> write_atomic(target, '{"format": 1}')
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('{"format": 1}', ['result.json'])
    """
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temporary = Path(name)
    try:
        if callable(content):
            os.close(descriptor)
            descriptor = -1
            content(temporary)
            descriptor = os.open(temporary, os.O_RDONLY)
        else:
            data = content.encode() if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
        os.close(descriptor)
        descriptor = -1
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if descriptor >= 0:
            os.close(descriptor)
        temporary.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
