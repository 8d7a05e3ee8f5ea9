"""A file's CRC-32 taken over its blobs on a worker thread while the loader decodes them.

``zlib.crc32`` releases the GIL for large buffers, and decoding a blob costs a few times
its CRC, so taking the CRC beside the decoding hides it: on two cores a load costs its
decoding alone. The blobs are checksummed in order, one at a time; ``settle`` waits for the
one in flight, so the caller can drop a blob (and bound its memory to one) before reading
the next.
"""

from __future__ import annotations

import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

# Below this many bytes a thread's hand-off costs more than the CRC it would hide.
THREADED_BYTES = 1 << 20


_pool: list[ThreadPoolExecutor] = []


def _worker() -> ThreadPoolExecutor:
    """One thread for the process, started by the first large load (starting one per load
    costs a thread's stack and arena, and unsettles the allocator's reuse of freed memory)."""
    if not _pool:
        _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="pytest-compress-crc"))
    return _pool[0]


class RunningCrc:
    """``zlib.crc32`` continued over each buffer passed to ``add``, in order."""

    def __init__(self, crc: int = 0) -> None:
        self._crc = crc
        self._pending: Future[int] | None = None

    def add(self, data: memoryview) -> None:
        """Continue the CRC over ``data``, which must stay unchanged until ``settle``."""
        self.settle()
        if data.nbytes < THREADED_BYTES:
            self._crc = zlib.crc32(data, self._crc)
            return
        self._pending = _worker().submit(zlib.crc32, data, self._crc)

    def settle(self) -> None:
        """Wait for the buffer in flight, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._crc = pending.result()

    @property
    def value(self) -> int:
        self.settle()
        return self._crc

    def __enter__(self) -> RunningCrc:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
