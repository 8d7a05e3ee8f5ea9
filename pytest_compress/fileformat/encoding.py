"""Bit packing and sparse index layouts: the byte-level encodings of ``container.py``.

``pack_bits`` stores each value in exactly ``bits`` bits; a sparse tensor is stored as
an index of its nonzero elements in one of three layouts (``LAYOUTS``), whichever is
smallest: dense (no index), a bitmask, or Deep Compression's relative index gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FileFormatError

_CHUNK_CODES = 1 << 20  # codes per chunk in the generic bit packer (a multiple of 8)
MAX_GAP_BITS = 16

LAYOUTS = ("dense", "mask", "gaps")


# --- bit packing ---------------------------------------------------------------------------


def _pack_by_words(v: np.ndarray, bits: int) -> bytes:
    """``bits`` < 8 not dividing 8 (3, 5, 6, 7): every 8 codes are ``bits`` whole bytes.
    Each group is shifted together into one little-endian 64-bit word, whose first
    ``bits`` bytes are the group's bytes in the bit stream (least significant bit first),
    a chunk of groups at a time: several times faster than a bit matrix."""
    parts = []
    for start in range(0, v.size, _CHUNK_CODES):
        chunk = v[start : start + _CHUNK_CODES]
        groups = -(-chunk.size // 8)
        padded = np.zeros(groups * 8, dtype=np.uint64)
        padded[: chunk.size] = chunk
        slots = padded.reshape(groups, 8)
        words = slots[:, 0].copy()
        for slot in range(1, 8):
            words |= slots[:, slot] << np.uint64(slot * bits)
        stream = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :bits]
        parts.append(stream.tobytes()[: packed_size(chunk.size, bits)])
    return b"".join(parts)


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values take at ``bits`` bits each: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers ``0 <= v < 2**bits`` (1 <= bits <= 16) at ``bits`` bits each."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be from 1 to 16, got {bits}")
    v = np.asarray(values).reshape(-1)
    if v.size and (v.min() < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"values to pack at {bits} bits must lie in [0, {(1 << bits) - 1}]")
    return _pack(v, bits)


def _pack(v: np.ndarray, bits: int) -> bytes:
    """``pack_bits`` of a flat array already known to lie in range."""
    if bits == 8:
        return v.astype(np.uint8, copy=False).tobytes()
    if bits == 16:
        return v.astype("<u2", copy=False).tobytes()
    if 8 % bits == 0:
        # Several codes per byte: shift each into its slot and OR them together.
        per_byte = 8 // bits
        padded = np.zeros(-(-v.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: v.size] = v
        slots = padded.reshape(-1, per_byte)
        # one slot of every byte at a time: contiguous uint8 loops, not a reduce over 2-8
        out = slots[:, 0].copy()
        for slot in range(1, per_byte):
            out |= slots[:, slot] << (slot * bits)
        return out.tobytes()
    if bits < 8:
        return _pack_by_words(v, bits)
    # Any other width: spread each code into its bits, then pack 8 bits a byte. Chunks of a
    # multiple of 8 codes end on a byte boundary, and keep the bit matrix small.
    shifts = np.arange(bits, dtype=np.uint16)
    parts = []
    for start in range(0, v.size, _CHUNK_CODES):
        chunk = v[start : start + _CHUNK_CODES].astype(np.uint16)
        bit_matrix = ((chunk[:, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes())
    return b"".join(parts)


def unpack_bits(data: bytes | memoryview | np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` unsigned ``bits``-bit integers packed in ``data``, as uint16.

    ``FileFormatError`` if ``data`` is not exactly ``packed_size(count, bits)`` bytes or its
    unused trailing bits are not zero.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be from 1 to 16, got {bits}")
    if len(data) != packed_size(count, bits):
        raise FileFormatError(
            f"{count} values at {bits} bits take {packed_size(count, bits)} bytes, got {len(data)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    spare = raw.size * 8 - count * bits
    if spare and raw[-1] >> (8 - spare):
        raise FileFormatError(
            f"the unused last {spare} bits of a {bits}-bit packed blob are not zero"
        )
    if bits == 8:
        return raw.astype(np.uint16)
    if bits == 16:
        return raw.view("<u2").astype(np.uint16)
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = np.arange(per_byte, dtype=np.uint8) * bits
        slots = (raw[:, None] >> shifts) & ((1 << bits) - 1)
        return slots.reshape(-1)[:count].astype(np.uint16)
    # Generic: unpack to bits, pad each code's bits to 16 and pack them back as uint16.
    out = np.empty(count, dtype=np.uint16)
    for start in range(0, count, _CHUNK_CODES):
        n = min(_CHUNK_CODES, count - start)
        first = start * bits // 8  # chunks start on a byte boundary (a multiple of 8 codes)
        bit_matrix = np.unpackbits(
            raw[first : first + packed_size(n, bits)], bitorder="little", count=n * bits
        ).reshape(n, bits)
        wide = np.zeros((n, 16), dtype=np.uint8)
        wide[:, :bits] = bit_matrix
        out[start : start + n] = np.packbits(wide, axis=1, bitorder="little").view("<u2")[:, 0]
    return out


def pack_trusted(values: np.ndarray, bits: int) -> bytes:
    """``pack_bits`` of values the caller derived in range (clamped codes, gaps below
    ``2**bits``, 0/1 flags): the same bytes without the two range passes (for 8-bit
    codes, a plain byte copy)."""
    return _pack(np.asarray(values).reshape(-1), bits)


def check_padding(data: bytes | memoryview | np.ndarray, bits: int, count: int) -> None:
    """``FileFormatError`` unless the unused bits after ``count`` packed values are zero
    (as ``unpack_bits`` checks, for a blob decoded a range at a time)."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    spare = raw.size * 8 - count * bits
    if spare and raw[-1] >> (8 - spare):
        raise FileFormatError(
            f"the unused last {spare} bits of a {bits}-bit packed blob are not zero"
        )


def unpack_range(raw: np.ndarray, bits: int, start: int, count: int) -> np.ndarray:
    """Values ``start .. start + count`` of a packed blob (``raw``: its uint8 array), as
    uint8 for up to 8 bits (a view of ``raw`` at 8 bits) or uint16 above, any ``start``."""
    first_bit = start * bits
    first, lead = divmod(first_bit, 8)
    span = raw[first : first + (lead + count * bits + 7) // 8]
    if bits == 8:
        return span
    if bits == 16:
        return span.view("<u2").astype(np.uint16, copy=False)
    if 8 % bits == 0:  # whole values per byte, so lead is a multiple of bits
        per_byte = 8 // bits
        slots = np.empty((span.size, per_byte), dtype=np.uint8)
        for slot in range(per_byte):  # contiguous uint8 loops, one slot at a time
            np.bitwise_and(span >> (slot * bits), (1 << bits) - 1, out=slots[:, slot])
        skip = lead // bits
        return slots.reshape(-1)[skip : skip + count]
    bit_matrix = np.unpackbits(span, bitorder="little")[lead : lead + count * bits]
    wide = np.zeros((count, 16), dtype=np.uint8)
    wide[:, :bits] = bit_matrix.reshape(count, bits)
    codes = np.packbits(wide, axis=1, bitorder="little").view("<u2")[:, 0]
    return codes.astype(np.uint8) if bits < 8 else codes.astype(np.uint16)


# --- sparse layouts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a tensor's stored elements are indexed: ``name`` in LAYOUTS, ``gap_bits`` for gaps."""

    name: str
    gap_bits: int = 0


def _gaps(nonzero: np.ndarray) -> np.ndarray:
    """Elements skipped before each nonzero: position minus previous position minus 1."""
    positions = np.flatnonzero(nonzero)
    return np.diff(positions, prepend=-1) - 1


def _gap_entries(gaps: np.ndarray, gap_bits: int) -> int:
    """Entries the gaps layout needs: one per nonzero plus one filler per 2**w skipped."""
    return int(gaps.size + (gaps >> gap_bits).sum())


def layout_sizes(nonzero: np.ndarray, value_bits: int) -> list[tuple[int, Layout]]:
    """(index + value bytes, layout) for dense, mask, and gaps at every gap width that could
    be the smallest (wider widths are left out once none of them can win)."""
    nonzero = np.asarray(nonzero, dtype=bool).reshape(-1)
    total = nonzero.size
    kept = int(nonzero.sum())
    sizes = [
        (packed_size(total, value_bits), Layout("dense")),
        (packed_size(total, 1) + packed_size(kept, value_bits), Layout("mask")),
    ]
    if kept < total:  # with no zeros, gaps can never beat dense
        gaps = None
        best = min(size for size, _ in sizes)
        for gap_bits in range(1, MAX_GAP_BITS + 1):
            # At least one entry per kept element: when even that cannot beat the best so
            # far, neither this width nor any wider one can (the cost grows with the
            # width), and a tie goes to the earlier layout anyway. This skips the costly
            # exact count on nearly dense tensors (an int8 weight with a few zero codes).
            if packed_size(kept, gap_bits) + packed_size(kept, value_bits) >= best:
                break
            gaps = _gaps(nonzero) if gaps is None else gaps
            entries = _gap_entries(gaps, gap_bits)
            cost = packed_size(entries, gap_bits) + packed_size(entries, value_bits)
            sizes.append((cost, Layout("gaps", gap_bits)))
    return sizes


def choose_layout(nonzero: np.ndarray, value_bits: int) -> Layout:
    """The smallest layout (dense, then mask, then the narrowest gaps win ties)."""
    return min(layout_sizes(nonzero, value_bits), key=lambda size_layout: size_layout[0])[1]


def encode_index(nonzero: np.ndarray, layout: Layout) -> tuple[bytes, np.ndarray]:
    """The index blob of ``layout`` and the flat positions it stores, for a nonzero mask."""
    nonzero = np.asarray(nonzero, dtype=bool).reshape(-1)
    if layout.name == "dense":
        return b"", np.arange(nonzero.size, dtype=np.int64)
    if layout.name == "mask":
        return pack_bits(nonzero.astype(np.uint8), 1), np.flatnonzero(nonzero)
    if layout.name != "gaps":
        raise ValueError(f"unknown layout {layout.name!r}; expected one of {LAYOUTS}")
    gaps = _gaps(nonzero)
    step = 1 << layout.gap_bits
    fillers = gaps >> layout.gap_bits
    # Each nonzero becomes its fillers (gap step - 1 each) followed by the remaining gap.
    entry_gaps = np.full(gaps.size + int(fillers.sum()), step - 1, dtype=np.int64)
    last_entry = np.cumsum(fillers + 1) - 1
    entry_gaps[last_entry] = gaps - fillers * step
    positions = np.cumsum(entry_gaps + 1) - 1
    return pack_bits(entry_gaps, layout.gap_bits), positions


def decode_index(blob: bytes | memoryview, layout: Layout, total: int, stored: int) -> np.ndarray:
    """The flat positions an index blob stores (``stored`` of them, among ``total``)."""
    if layout.name == "dense":
        if len(blob) or stored != total:
            raise FileFormatError("a dense tensor has no index and stores every element")
        return np.arange(total, dtype=np.int64)
    if layout.name == "mask":
        positions = np.flatnonzero(unpack_bits(blob, 1, total))
        if positions.size != stored:
            raise FileFormatError(
                f"the mask marks {positions.size} elements, the header says {stored}"
            )
        return positions
    if layout.name != "gaps":
        raise FileFormatError(f"unknown layout {layout.name!r}; expected one of {LAYOUTS}")
    gaps = unpack_bits(blob, layout.gap_bits, stored).astype(np.int64)
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and positions[-1] >= total:
        raise FileFormatError(f"the gaps run to element {positions[-1]}, past the {total} elements")
    return positions
