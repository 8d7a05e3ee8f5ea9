"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: str | os.PathLike, parts: Iterable[bytes]) -> int:
    """Write ``parts`` to a temporary file beside ``path``, then rename it over ``path``.

    Either the old file stays whole or the new one is complete. Returns the bytes written.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL: never write through someone else's file; mode 0o666 minus the umask, as open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    written = 0
    try:
        with os.fdopen(fd, "wb") as stream:
            for part in parts:
                stream.write(part)
                written += len(part)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return written


def write_text_atomically(path: Path, text: str) -> None:
    """``write_atomically`` for UTF-8 text."""
    write_atomically(path, [text.encode("utf-8")])
