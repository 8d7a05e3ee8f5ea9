"""A tensor's blob, chunk by chunk: its length without building it, its bytes as a stream.

``container.py`` writes, per tensor, an index of the stored elements (dense, mask or gaps:
``encoding.py``) and the stored elements themselves. Building that blob whole costs int64
positions, int64 codes and the blob for every element; here an ``Elements`` source yields
the tensor in chunks of whole rows (its nonzero flags and its values), so

- ``plan`` counts what every layout would cost (one pass, a second only when the gaps
  layout could win) and picks the smallest, exactly as ``encoding.choose_layout``;
- ``index_parts`` and ``value_parts`` yield the blob's bytes, identical to
  ``encoding.encode_index`` and ``pack_bits`` of the whole, holding a chunk at a time.

A dense tensor needs no positions at all; the others need them only for a chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from .encoding import MAX_GAP_BITS, Layout, pack_trusted, packed_size

CHUNK = 1 << 20  # elements per chunk (rounded to whole rows)


@dataclass(frozen=True)
class Elements:
    """A tensor's flat elements as the encoder reads them.

    ``nonzero(start, stop)``: bool flags of the elements in [start, stop) (a stored zero
    is its zero point for quantized codes); ``values(index)``: the elements at an index
    (a slice or an int64 array) as an array ``pack`` turns into bytes; ``bits``: bits per
    stored element; ``row``: chunks hold whole rows of this many elements.
    """

    numel: int
    bits: int
    nonzero: Callable[[int, int], np.ndarray]
    values: Callable[[slice | np.ndarray], np.ndarray]
    packed: bool  # values are integer codes packed at ``bits``; else raw element bytes
    row: int = 1
    # the count of nonzero elements in [start, stop), when cheaper than the flags
    kept: Callable[[int, int], int] | None = None

    def count(self, start: int, stop: int) -> int:
        if self.kept is not None:
            return self.kept(start, stop)
        return int(np.count_nonzero(self.nonzero(start, stop)))

    def chunks(self) -> Iterator[tuple[int, int]]:
        row = max(1, self.row)
        step = max(1, CHUNK // row) * row
        for start in range(0, self.numel, step):
            yield start, min(start + step, self.numel)


@dataclass(frozen=True)
class Plan:
    """The chosen layout, the stored element count and the index and values lengths;
    ``nonzero``: the elements that are not zero, whatever the layout stores."""

    layout: Layout
    stored: int
    index_bytes: int
    value_bytes: int
    nonzero: int = -1
    # a gaps layout's entries per chunk (uint16: below 2**gap_bits), kept from planning for
    # the write pass (``plan``'s ``budget``), which otherwise finds them twice more
    entries: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)


class _BitWriter:
    """``pack_bits`` of a long stream fed in pieces: whole groups of 8 codes (``bits``
    bytes) go out as they come, the rest waits for the next piece. The values are the
    encoder's own (clamped codes, gaps, flags), so their range is not checked again."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.pending = np.empty(0, dtype=np.uint16)

    def feed(self, values: np.ndarray) -> bytes:
        if self.bits % 8 == 0:  # whole bytes per value: nothing ever waits
            return pack_trusted(values, self.bits)
        if self.pending.size:
            values = np.concatenate([self.pending, values.astype(np.uint16)])
        whole = values.size - values.size % 8
        self.pending = values[whole:].astype(np.uint16)
        return pack_trusted(values[:whole], self.bits) if whole else b""

    def close(self) -> bytes:
        return pack_trusted(self.pending, self.bits) if self.pending.size else b""


def plan(source: Elements, budget: int = 0) -> Plan:
    """The smallest layout (dense, then mask, then the narrowest gaps win ties), as
    ``encoding.layout_sizes`` and ``choose_layout`` pick it, and its sizes; a gaps
    layout's entries go with it when its gaps fit in ``budget`` bytes."""
    total, bits = source.numel, source.bits
    kept = sum(source.count(a, b) for a, b in source.chunks())
    value_size = packed_size(total, bits)
    sizes = [
        (value_size, Plan(Layout("dense"), total, 0, value_size)),
        (
            packed_size(total, 1) + packed_size(kept, bits),
            Plan(Layout("mask"), kept, packed_size(total, 1), packed_size(kept, bits)),
        ),
    ]
    best = min(size for size, _ in sizes)
    # At least one entry per kept element: once that cannot beat the best, no wider width
    # can (see encoding.layout_sizes), so the gaps are counted only for the widths left.
    widths = []
    if kept < total:
        for gap_bits in range(1, MAX_GAP_BITS + 1):
            if packed_size(kept, gap_bits) + packed_size(kept, bits) >= best:
                break
            widths.append(gap_bits)
    held: list[np.ndarray] | None = [] if budget > 0 else None
    if widths:
        fillers = dict.fromkeys(widths, 0)
        narrow = np.int32 if total < 2**31 else np.int64  # a gap is below the element count
        for gaps in _gaps(source):
            # gaps >> (w + 1) is (gaps >> w) >> 1: one array shifted in place, width by width
            shifted = gaps >> widths[0]
            for gap_bits in widths:
                fillers[gap_bits] += int(shifted.sum())
                shifted >>= 1
            if held is not None:
                held.append(gaps.astype(narrow))
                budget -= held[-1].nbytes
                if budget < 0:
                    held = None  # over the budget: the write pass finds them again
        for gap_bits in widths:
            entries = kept + fillers[gap_bits]
            index, values = packed_size(entries, gap_bits), packed_size(entries, bits)
            sizes.append((index + values, Plan(Layout("gaps", gap_bits), entries, index, values)))
    chosen = min(sizes, key=lambda size_plan: size_plan[0])[1]
    written = None
    if held and chosen.layout.name == "gaps":
        gap_bits = chosen.layout.gap_bits
        written = tuple(_with_fillers(gaps, gap_bits).astype(np.uint16) for gaps in held)
    return replace(chosen, nonzero=kept, entries=written)


def _gaps(source: Elements) -> Iterator[np.ndarray]:
    """Per chunk, the elements skipped before each nonzero (int64), across chunks."""
    previous = -1
    for start, stop in source.chunks():
        positions = np.flatnonzero(source.nonzero(start, stop)) + start
        if positions.size:
            yield np.diff(positions, prepend=previous) - 1
            previous = int(positions[-1])


def _with_fillers(gaps: np.ndarray, gap_bits: int) -> np.ndarray:
    """A chunk's gaps as the layout's entries: a gap too wide for ``gap_bits`` is preceded
    by fillers (``2**gap_bits - 1``: that many skipped, no element stored)."""
    fillers = gaps >> gap_bits
    extra = int(fillers.sum())
    if extra == 0:  # every gap fits its width: the entries are the gaps themselves
        return gaps
    step = 1 << gap_bits
    entry_gaps = np.full(gaps.size + extra, step - 1, dtype=np.int64)
    entry_gaps[np.cumsum(fillers + 1) - 1] = gaps - fillers * step
    return entry_gaps


def _entries(
    source: Elements,
    gap_bits: int,
    known: tuple[np.ndarray, ...] | None = None,
    *,
    positions: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Per chunk, the gaps layout's entries (gap, and with ``positions`` its position):
    fillers included; the ``known`` ones when the plan kept them."""
    previous = -1
    chunks = known if known is not None else (_with_fillers(g, gap_bits) for g in _gaps(source))
    for entry_gaps in chunks:
        at = None
        if positions:
            at = (
                np.cumsum(entry_gaps, dtype=np.int64) + np.arange(1, entry_gaps.size + 1) + previous
            )
            previous = int(at[-1])
        else:
            previous += int(entry_gaps.sum(dtype=np.int64)) + entry_gaps.size
        yield entry_gaps, at


def index_parts(
    source: Elements, layout: Layout, known: tuple[np.ndarray, ...] | None = None
) -> Iterator[bytes]:
    """The index blob of ``layout``, in pieces (as ``encoding.encode_index`` builds it);
    ``known``: the entries the plan kept."""
    if layout.name == "dense":
        return
    writer = _BitWriter(1 if layout.name == "mask" else layout.gap_bits)
    if layout.name == "mask":
        for start, stop in source.chunks():
            yield writer.feed(source.nonzero(start, stop).astype(np.uint8))
    else:
        for entry_gaps, _ in _entries(source, layout.gap_bits, known, positions=False):
            yield writer.feed(entry_gaps)
    yield writer.close()


def value_parts(
    source: Elements, layout: Layout, known: tuple[np.ndarray, ...] | None = None
) -> Iterator[bytes]:
    """The stored elements in flat order, in pieces: packed codes or raw bytes; ``known``:
    the entries the plan kept."""
    writer = _BitWriter(source.bits) if source.packed else None

    def out(values: np.ndarray) -> bytes:
        return values.tobytes() if writer is None else writer.feed(values)

    if layout.name == "dense":
        for start, stop in source.chunks():
            yield out(source.values(slice(start, stop)))
    elif layout.name == "mask":
        for start, stop in source.chunks():
            yield out(source.values(np.flatnonzero(source.nonzero(start, stop)) + start))
    else:
        for _, positions in _entries(source, layout.gap_bits, known):
            assert positions is not None
            yield out(source.values(positions))
    if writer is not None:
        yield writer.close()
