"""Writing files so that a crash never leaves a half-written one behind.

``write_atomically`` writes a temporary file beside the target and renames it over the
target; a write killed midway leaves only its temporary file, which a later write to the
same path removes. ``locked`` serializes read-modify-write cycles between processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

# How old another write's temporary file must be before a write to the same path removes
# it as the leftover of a killed write (a live write of even a large model is far faster).
LEFTOVER_SECONDS = 3600.0
LOCK_TIMEOUT = 120.0


def _temporary_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.tmp"


def remove_leftovers(path: str | os.PathLike, older_than: float = LEFTOVER_SECONDS) -> list[str]:
    """Remove the temporary files that killed writes to ``path`` left, older than ``older_than`` s.

    Returns the names removed. Only names ``write_atomically`` makes for this very path.
    """
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{16}}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if not pattern.fullmatch(entry.name):
                continue
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime >= older_than:
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


def write_atomically(
    path: str | os.PathLike,
    parts: Iterable[bytes],
    *,
    leftovers_after: float = LEFTOVER_SECONDS,
    finish: Callable[[BinaryIO], None] | None = None,
) -> int:
    """Write ``parts`` to a temporary file beside ``path``, then rename it over ``path``.

    Either the old file stays whole or the new one is complete. Temporary files of earlier
    writes to ``path`` that were killed (older than ``leftovers_after`` seconds) are
    removed first. ``finish`` may patch the written stream (a checksum known only at the
    end of a streamed ``parts``) before it is synced. Returns the bytes written.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_leftovers(path, leftovers_after)
    temporary = os.path.join(directory, _temporary_name(name))
    # O_EXCL: never write through someone else's file; mode 0o666 minus the umask, as open().
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, 0o666)
    written = 0
    try:
        with os.fdopen(fd, "wb") as stream:
            for part in parts:
                stream.write(part)
                written += len(part)
            if finish is not None:
                finish(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return written


def write_text_atomically(
    path: Path, text: str, *, leftovers_after: float = LEFTOVER_SECONDS
) -> None:
    """``write_atomically`` for UTF-8 text."""
    write_atomically(path, [text.encode("utf-8")], leftovers_after=leftovers_after)


def lock_path(path: str | os.PathLike) -> str:
    """The lock file that ``locked(path)`` holds: ``.<name>.lock`` beside ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.lock")


@contextlib.contextmanager
def locked(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` between processes (a lock file beside it).

    Raises ``TimeoutError`` (an ``OSError``) when another process holds it longer than
    ``timeout`` seconds. The lock file is removed on release; a process that locked a
    lock file removed meanwhile tries again, so two holders never overlap.
    """
    name = lock_path(path)
    os.makedirs(os.path.dirname(name), exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o666)
        if _try_lock(fd) and _same_file(fd, name):
            break
        os.close(fd)
        if time.monotonic() > deadline:
            raise TimeoutError(f"another process held the lock {name} for over {timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)  # before unlocking: a waiter then sees a removed file and retries
        _unlock(fd)
        os.close(fd)


def _same_file(fd: int, name: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(name))
    except OSError:
        return False


if sys.platform == "win32":  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
