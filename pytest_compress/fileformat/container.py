"""``save_compressed`` / ``load_compressed``: the honest on-disk size of a compressed model.

The file holds every ``state_dict`` entry of the model, quantized weights as bit-packed
integer codes and sparse tensors in a sparse encoding where that is smaller, so its length
is what the compressed model really costs. No pickle is involved: the loader only parses
a JSON header and raw little-endian numbers, checking every length against the file and
the target model before allocating anything.

File layout, version 2 (all integers little-endian)::

    offset  size  field
    0       4     magic b"PTCZ"
    4       2     format version (uint16), 2 (version 1 files still load)
    6       4     header length H in bytes (uint32)
    10      4     CRC-32 of everything after these 14 bytes (uint32)
    14      H     header: zlib-compressed UTF-8 JSON (below)
    14+H    ...   data: the blobs of the header's tensors, one after the other, in order

The header is ``{"t": [tensor, ...], "h": [hook, ...]}``. A tensor is one of

- ``{"k": key, "a": source}``: an alias; ``key`` shares its storage with the earlier
  entry ``source`` (tied weights) and is stored once. ``"r": 1`` when it also shares the
  source's quantization record.
- ``{"k": key, "d": dtype, "s": shape, "e": layout, "L": nbytes, ...}`` with ``dtype``
  a torch dtype name (``"float32"``, ``"int64"``, ``"bool"``, ...) and ``nbytes`` the
  length of its blob. Optional fields: ``"q": [bits, axis, qmin, qmax, scale dtype,
  scale shape, group size]`` when the tensor is quantized to integer codes (group size
  null, or G for group-wise scales shaped (channels, groups); version 1 has no group
  size), ``"f": [format, axis, scale dtype, scale shape]`` when it is cast to a float
  format (``"fp16"``, ``"bf16"``, ``"fp8-e4m3"``, ``"fp8-e5m2"``; scale dtype and shape
  null for fp16 and bf16, axis null for one scale per tensor), ``"n"`` (stored element
  count) for a sparse layout and ``"w"`` (gap width in bits) for the gaps layout.

A tensor's blob is, in order:

1. quantized only: the scales (raw ``scale dtype``), then the zero points minus
   ``qmin``, bit-packed at ``bits`` bits; float format with a scale (fp8): the scales;
2. the index of the stored elements, by layout:
   ``"dense"``: nothing, every element is stored;
   ``"mask"``: one bit per element, set where the element is stored;
   ``"gaps"``: one ``w``-bit gap per stored element, the count of elements skipped since
   the previous stored one (Deep Compression's relative indices). A gap longer than
   ``2**w - 1`` is bridged by filler entries that each skip ``2**w - 1`` and store a zero,
   so the stored positions are ``cumsum(gap + 1) - 1``;
3. the stored elements in flat (C) order: codes minus ``qmin`` bit-packed at ``bits`` bits
   for a quantized tensor, the format's raw bytes (2 or 1 per element) for a float
   format (a value is ``float32(element) * scale`` of its channel for fp8), raw element
   bytes otherwise.

Elements that are not stored are zero: the zero point of their channel (or group) for a
quantized tensor (dequantized to exactly 0.0), 0 / 0.0 / False otherwise (a ``-0.0`` left out by a
sparse layout comes back as ``+0.0``, equal under ``torch.equal`` and in every output).
The writer picks whichever layout is smallest, preferring dense, then mask, on a tie.

Bit packing: code ``i`` occupies bits ``i*bits .. i*bits+bits-1`` of the blob, counting
from the least significant bit of byte 0 (``np.packbits(bitorder="little")`` order);
unused bits of the last byte are zero.

A hook is ``[module, "fq", scale, zero_point, bits, qmin, qmax]`` (an
``ActivationFakeQuantize``) or ``[module, "prune", beta]`` (an ``ActivationPrune``), in
the order ``activation_hooks`` lists them.

Bounds. What a file may cost is set by the model it is loaded into, checked before
anything is allocated: the header may decompress to at most a few hundred bytes per
``state_dict`` entry and per possible hook (``_header_limit``; ``zlib``'s ``max_length``
stops a bomb), and it may hold at most ``2 * entries + 16`` JSON objects (counted while
parsing); no ``NaN`` or ``Infinity``; the document has exactly ``"t"`` and ``"h"``;
a shape or scale shape has at most ``MAX_DIMS`` (8) dimensions; at most
``MAX_HOOKS_PER_MODULE`` (4) hooks per module; every blob length follows from the model's
own shapes. So a load costs the model plus one tensor's blob (each is read and decoded a
block at a time into the loaded copy, ``decoding.py``), and every problem, whatever it
is, raises ``FileFormatError`` naming the file (a failed checksum first: a corrupted file
says so, whatever its damage decoded to). The writer refuses (``ModelError``) a model
the reader would refuse. A model on the meta device is materialised on the CPU from the
file, or refused when it has meta tensors the file does not hold (non-persistent buffers).
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, TypeGuard, cast

import numpy as np
import torch
from torch import nn

from ..engine.activations import (
    ActivationDynamicQuantize,
    ActivationFakeQuantize,
    ActivationFloatCast,
    ActivationPrune,
    AnyActivationHook,
    activation_hooks,
    add_activation_hook,
    remove_activation_hooks,
)
from ..engine.floats import FLOAT_DTYPES, FloatParams
from ..engine.groups import group_count
from ..engine.lazy import LazyWeight, PackedCodes, RoundedValues
from ..engine.quant import scale_dtype_for
from ..engine.record import (
    CompressionRecord,
    QuantParams,
    get_record,
    remember_nonzero,
    set_record,
)
from ..engine.spares import sole_owners, twin
from ..engine.specs import FLOAT_FORMATS, MAX_BITS, MIN_BITS
from ..errors import FileFormatError, ModelError
from ..files import write_atomically
from .checksum import RunningCrc
from .decoding import Codes, Scales, blocks, decode_codes, decode_raw, fill
from .decoding import Elements as DecodedElements
from .elements import quantized_elements, raw_elements
from .encoding import (
    LAYOUTS,
    MAX_GAP_BITS,
    Layout,
    pack_bits,
    packed_size,
    unpack_bits,
)
from .stream import Elements, Plan, index_parts, value_parts
from .stream import plan as stream_plan

MAGIC = b"PTCZ"
FORMAT_VERSION = 2
_VERSIONS = (1, 2)  # version 1: no group-wise scales, no float formats
_PREFIX = struct.Struct("<4sHII")  # magic, version, header length, CRC-32 of the rest
# Bounds on a header, from the model it is loaded into (see "Bounds" in the docstring).
MAX_DIMS = 8
MAX_HOOKS_PER_MODULE = 4
_ENTRY_BYTES = 600  # a tensor entry's JSON, its key(s) aside: fields, 8 dims, numbers
_HOOK_BYTES = 200  # an activation hook's JSON, its module name aside
_ESCAPED = 12  # bytes per character of the keys an entry names (two keys, \uXXXX each)

_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


# --- writing -------------------------------------------------------------------------------


def _raw_bytes(t: torch.Tensor) -> np.ndarray:
    """A tensor's elements as a (numel, itemsize) uint8 array, in C order."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), t.element_size())


def _tensor_entry(
    key: str, dtype: torch.dtype, shape: tuple[int, ...], layout: Layout, stored: int, nbytes: int
) -> dict:
    entry: dict[str, Any] = {
        "k": key,
        "d": _DTYPE_NAMES[dtype],
        "s": list(shape),
        "e": layout.name,
        "L": nbytes,
    }
    if layout.name != "dense":
        entry["n"] = stored
    if layout.name == "gaps":
        entry["w"] = layout.gap_bits
    return entry


def _checked_qparams(
    key: str, dtype: torch.dtype, shape: tuple[int, ...], params: QuantParams
) -> int | None:
    """The record's axis, normalised; ``ModelError`` if the record cannot be stored."""
    bits, qmin, qmax = params.bits, params.qmin, params.qmax
    if dtype not in _DTYPE_NAMES or not dtype.is_floating_point:
        raise ModelError(f"{key} is quantized but has dtype {dtype}, not a float dtype")
    if not (MIN_BITS <= bits <= MAX_BITS and qmin <= qmax and qmax - qmin < 1 << bits):
        raise ModelError(f"{key}: codes [{qmin}, {qmax}] do not fit in {bits} bits")
    axis, dims = params.axis, len(shape)
    if axis is not None:
        if not -dims <= axis < dims:
            raise ModelError(f"{key}: axis {axis} is out of range for shape {shape}")
        axis %= dims
    channels = 1 if axis is None else shape[axis]
    if params.group_size is not None:
        if axis is None or params.group_size <= 0:
            raise ModelError(f"{key}: group-wise scales need an axis and a positive group size")
        channels *= group_count(shape, axis, params.group_size)
    scale, zero_point = params.scale, params.zero_point
    if scale.numel() != channels or zero_point.shape != scale.shape:
        raise ModelError(
            f"{key}: {channels} channel(s) or groups, but a scale of shape "
            f"{tuple(scale.shape)} and a zero point of shape {tuple(zero_point.shape)}"
        )
    if scale.dim() > MAX_DIMS:
        raise ModelError(f"{key}: a scale of {scale.dim()} dimensions; at most {MAX_DIMS}")
    if scale.dtype not in _DTYPE_NAMES or not scale.is_floating_point():
        raise ModelError(f"{key}: scale dtype {scale.dtype} is not a supported float dtype")
    if zero_point.numel() and (int(zero_point.min()) < qmin or int(zero_point.max()) > qmax):
        raise ModelError(f"{key}: zero points outside [{qmin}, {qmax}]")
    return axis


@dataclass(frozen=True)
class _Blob:
    """A tensor's blob, known by its length: ``head`` (scales, zero points), then the index
    and the elements of ``plan``, streamed from a source rebuilt on demand (``stream.py``),
    so neither ``compressed_size`` nor ``save_compressed`` holds a blob whole."""

    head: bytes
    source: Callable[[], Elements]
    plan: Plan

    @property
    def size(self) -> int:
        return len(self.head) + self.plan.index_bytes + self.plan.value_bytes

    def parts(self) -> Iterator[bytes]:
        yield self.head
        source = self.source()
        yield from index_parts(source, self.plan.layout, self.plan.entries)
        yield from value_parts(source, self.plan.layout, self.plan.entries)


def _planned(
    key: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    head: bytes,
    source: Callable[[], Elements],
    cache: _CodeCache | None = None,
) -> tuple[dict, _Blob]:
    """The entry and blob of a tensor, planned: with ``cache`` (a save: the write pass
    follows) a gaps layout keeps its entries for it, as far as the budget allows."""
    plan = stream_plan(source(), cache.left if cache is not None else 0)
    if plan.entries is not None:
        assert cache is not None
        if not cache.take(sum(part.nbytes for part in plan.entries)):
            plan = replace(plan, entries=None)
    nbytes = len(head) + plan.index_bytes + plan.value_bytes
    return _tensor_entry(key, dtype, shape, plan.layout, plan.stored, nbytes), _Blob(
        head, source, plan
    )


# Codes derived while planning are kept for the write pass, up to this many bytes per save
# (the rest are derived again): deriving and checking them is most of a save's time, and
# 8-bit codes of a float32 model are a quarter of its bytes.
CODE_CACHE_BYTES = 256 << 20


class _CodeCache:
    """What is left of a save's budget for codes kept between planning and writing."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def _code_dtype(params: QuantParams) -> torch.dtype:
    """The narrow codes' dtype: uint8 up to 8 bits' range, else uint16."""
    return torch.uint8 if params.qmax - params.qmin < 1 << 8 else torch.uint16


def encode_codes(
    key: str,
    codes: torch.Tensor,
    params: QuantParams,
    dtype: torch.dtype,
    shape: tuple[int, ...],
) -> tuple[dict, _Blob]:
    """The entry and blob of a quantized tensor from its known codes: ``codes - qmin`` as
    ``params`` gives them (uint8 up to 8 bits' range, else uint16; shaped ``shape``), for
    a tensor of ``dtype``. Nothing is re-derived or checked against float values."""
    if tuple(codes.shape) != tuple(shape) or codes.dtype != _code_dtype(params):
        raise ModelError(
            f"{key}: codes of shape {tuple(codes.shape)} and dtype {codes.dtype}, expected "
            f"{tuple(shape)} and {_code_dtype(params)}"
        )
    held = codes.detach().cpu().contiguous()
    return _encode_codes(key, params, dtype, tuple(shape), lambda: held)


def _encode_codes(
    key: str,
    params: QuantParams,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    codes: Callable[[], torch.Tensor],
    cache: _CodeCache | None = None,
) -> tuple[dict, _Blob]:
    """Scales, packed zero points, index and packed codes; ``codes`` gives the narrow
    codes each time the blob is planned or written."""
    axis = _checked_qparams(key, dtype, shape, params)
    zero_point = params.zero_point.detach().cpu()
    head = _raw_bytes(params.scale).tobytes() + pack_bits(
        zero_point.reshape(-1).to(torch.int64).numpy() - params.qmin, params.bits
    )

    def source() -> Elements:
        return quantized_elements(codes(), zero_point - params.qmin, params, axis)

    entry, blob = _planned(key, dtype, shape, head, source, cache)
    entry["q"] = [
        params.bits,
        axis,
        params.qmin,
        params.qmax,
        _DTYPE_NAMES[params.scale.dtype],
        list(params.scale.shape),
        params.group_size,
    ]
    return entry, blob


def _encode_quantized(
    key: str, values: torch.Tensor, params: QuantParams, cache: _CodeCache | None
) -> tuple[dict, _Blob]:
    """A fake-quantized tensor's blob: its codes derived (and checked to be on the grid)
    once while planning, kept for the write pass when ``cache`` has room for them."""
    _checked_qparams(key, values.dtype, tuple(values.shape), params)
    values = values.detach().cpu()
    if isinstance(values, PackedCodes | RoundedValues) and _same_params(values.params, params):
        # the low-memory mode's weight holds (or computes) exactly these codes
        return _encode_codes(key, params, values.dtype, tuple(values.shape), values.codes, cache)
    kept: list[torch.Tensor] = []
    derived = [False]

    def codes() -> torch.Tensor:
        if kept:
            return kept.pop()  # the write pass: used once, then freed as it is written
        # ModelError if off the grid; checked once, a later pass reuses the verdict
        narrow = params.stored_codes(values, key, check=not derived[0])
        size = narrow.numel() * narrow.element_size()
        if not derived[0] and cache is not None and cache.take(size):
            kept.append(narrow)
        derived[0] = True
        return narrow

    return _encode_codes(key, params, values.dtype, tuple(values.shape), codes, cache)


def _encode_float(
    key: str, values: torch.Tensor, params: FloatParams, cache: _CodeCache | None = None
) -> tuple[dict, _Blob]:
    """Scales (fp8), index and the format's raw bytes of a tensor cast to a float format."""
    if values.dtype not in _DTYPE_NAMES or not values.is_floating_point():
        raise ModelError(f"{key} is cast to {params.format} but has dtype {values.dtype}")
    scale = params.scale
    if scale is not None:
        axis = params.axis
        channels = 1 if axis is None else values.shape[axis]
        if scale.numel() != channels or scale.dtype not in _DTYPE_NAMES or scale.dim() > 1:
            raise ModelError(f"{key}: {channels} channel(s), but a scale of {scale.numel()}")
    values = values.detach().cpu()

    def source() -> Elements:
        if isinstance(values, RoundedValues) and _same_params(values.params, params):
            return raw_elements(values.elements())  # the low-memory mode's weight makes them
        return raw_elements(params.elements(values, key))  # ModelError if off the format

    head = b"" if scale is None else _raw_bytes(scale).tobytes()
    entry, blob = _planned(key, values.dtype, tuple(values.shape), head, source, cache)
    entry["f"] = [
        params.format,
        params.axis,
        None if scale is None else _DTYPE_NAMES[scale.dtype],
        None if scale is None else list(scale.shape),
    ]
    return entry, blob


def _encode_raw(key: str, t: torch.Tensor, cache: _CodeCache | None = None) -> tuple[dict, _Blob]:
    """Index and raw element bytes of a tensor stored as it is."""
    if t.dtype not in _DTYPE_NAMES:
        raise ModelError(
            f"{key} has dtype {t.dtype}, which the file format does not store "
            f"(supported: {', '.join(_DTYPES)})"
        )
    t = t.detach().cpu()
    return _planned(key, t.dtype, tuple(t.shape), b"", lambda: raw_elements(t), cache)


def _same_params(a: QuantParams | FloatParams, b: QuantParams | FloatParams) -> bool:
    if isinstance(a, FloatParams) or isinstance(b, FloatParams):
        return a is b or (
            isinstance(a, FloatParams)
            and isinstance(b, FloatParams)
            and (a.format, a.axis) == (b.format, b.axis)
            and (a.scale is None) == (b.scale is None)
            and (a.scale is None or b.scale is None or torch.equal(a.scale, b.scale))
        )
    return a is b or (
        (a.bits, a.axis, a.qmin, a.qmax, a.group_size)
        == (b.bits, b.axis, b.qmin, b.qmax, b.group_size)
        and a.scale.dtype == b.scale.dtype
        and torch.equal(a.scale, b.scale)
        and torch.equal(a.zero_point, b.zero_point)
    )


def _storage_id(t: torch.Tensor) -> tuple | None:
    """What makes two state_dict entries one tensor; None for empty tensors (no storage)."""
    if t.numel() == 0:
        return None
    if isinstance(t, LazyWeight):  # no storage of its own: its packed tensors say
        return (t.device, t.key(), t.dtype, tuple(t.shape))
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def _encode_tensors(
    model: nn.Module, cache: _CodeCache | None = None
) -> tuple[list[dict], list[_Blob]]:
    """Every state_dict entry's header entry and blob; ``cache``: the write pass follows."""
    state = model.state_dict()
    quantized = get_record(model).quantized
    unknown = sorted(set(quantized) - set(state))
    if unknown:
        raise ModelError(f"the compression record names keys not in the state_dict: {unknown}")
    entries: list[dict] = []
    blobs: list[_Blob] = []
    first_key: dict[tuple, str] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ModelError(f"state_dict entry {key} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided:
            raise ModelError(f"state_dict entry {key} has layout {t.layout}; only dense tensors")
        if t.dim() > MAX_DIMS:
            raise ModelError(f"state_dict entry {key} has {t.dim()} dimensions; at most {MAX_DIMS}")
        storage = _storage_id(t)
        source = first_key.get(storage) if storage is not None else None
        if source is not None:
            mine, theirs = quantized.get(key), quantized.get(source)
            if mine is None and theirs is None:
                entries.append({"k": key, "a": source})
                continue
            if mine is not None and theirs is not None and _same_params(mine, theirs):
                entries.append({"k": key, "a": source, "r": 1})
                continue
            # Tied but recorded differently: store both, each with its own record.
        elif storage is not None:
            first_key[storage] = key
        mapping = quantized.get(key)
        if isinstance(mapping, FloatParams):
            entry, blob = _encode_float(key, t, mapping, cache)
        elif mapping is not None:
            entry, blob = _encode_quantized(key, t, mapping, cache)
        else:
            entry, blob = _encode_raw(key, t, cache)
        remember_nonzero(t, blob.plan.nonzero)  # what a sparsity count reads next
        entries.append(entry)
        blobs.append(blob)
    return entries, blobs


def _hook_entries(model: nn.Module) -> list[list]:
    hooks: list[list] = []
    per_module = Counter(name for name, _ in activation_hooks(model))
    crowded = [name for name, count in per_module.items() if count > MAX_HOOKS_PER_MODULE]
    if crowded:
        raise ModelError(
            f"module {crowded[0]!r} has {per_module[crowded[0]]} activation hooks; "
            f"the file format stores at most {MAX_HOOKS_PER_MODULE} per module"
        )
    for name, hook in activation_hooks(model):
        if isinstance(hook, ActivationFakeQuantize):
            hooks.append(
                [
                    name,
                    "fq",
                    float(hook.scale),
                    int(hook.zero_point),
                    int(hook.bits),
                    int(hook.qmin),
                    int(hook.qmax),
                ]
            )
        elif isinstance(hook, ActivationDynamicQuantize):
            hooks.append([name, "dyn", int(hook.bits)])
        elif isinstance(hook, ActivationFloatCast):
            hooks.append([name, "fcast", hook.format])
        else:
            hooks.append([name, "prune", float(hook.beta)])
    return hooks


def _encode(
    model: nn.Module, target: str, cache: _CodeCache | None = None
) -> tuple[bytes, list[_Blob]]:
    """The compressed header and the tensor blobs of ``model``'s file (``target`` names it;
    ``cache`` keeps codes for a write pass)."""
    with torch.no_grad():
        entries, blobs = _encode_tensors(model, cache)
    try:
        text = json.dumps(
            {"t": entries, "h": _hook_entries(model)}, separators=(",", ":"), allow_nan=False
        )
    except ValueError as err:  # a NaN or infinite activation scale
        raise ModelError(f"cannot save {target}: {err}") from err
    return zlib.compress(text.encode("utf-8"), 9), blobs


def save_compressed(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` (a compressed copy, or any model) to ``path``; return the bytes written.

    Quantized weights (those in the model's compression record) are stored as bit-packed
    codes, sparse tensors in a sparse layout where that is smaller, tied tensors once, and
    activation hooks by their parameters. The file appears only complete: a failure leaves
    no file behind and an existing ``path`` untouched. See the module docstring for the format.

    The blobs are streamed to the file a chunk at a time; the CRC, known only at the end,
    is written into the prefix last.
    """
    path = os.fspath(path)
    header, blobs = _encode(model, path, _CodeCache(CODE_CACHE_BYTES))
    expected = _PREFIX.size + len(header) + sum(blob.size for blob in blobs)
    crc = [zlib.crc32(header)]

    def parts() -> Iterator[bytes]:
        yield _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), 0)
        yield header
        for blob in blobs:
            for part in blob.parts():
                crc[0] = zlib.crc32(part, crc[0])
                yield part

    def finish(stream: BinaryIO) -> None:
        stream.seek(_PREFIX.size - 4)  # the CRC is the prefix's last field
        stream.write(struct.pack("<I", crc[0]))

    written = write_atomically(path, parts(), finish=finish)
    if written != expected:  # the planned lengths are the header's: they must hold
        raise AssertionError(f"wrote {written} bytes to {path}, planned {expected}")
    return written


def compressed_size(model: nn.Module) -> int:
    """Bytes of the file ``save_compressed`` writes for ``model`` (it loads back).

    Counted from the same encoding plan: each blob's length follows from its layout and
    counts, so no blob is built, and the number is the file's size, exactly.
    """
    header, blobs = _encode(model, "the model")
    return _PREFIX.size + len(header) + sum(blob.size for blob in blobs)


def stored_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes each ``state_dict`` entry takes in the file ``save_compressed`` writes (its
    blob; an entry stored as an alias of a tied tensor takes 0). Their sum plus the
    header is ``compressed_size(model)``."""
    entries, blobs = _encode_tensors(model)
    sizes = iter(blob.size for blob in blobs)
    return {entry["k"]: 0 if "a" in entry else next(sizes) for entry in entries}


# --- reading -------------------------------------------------------------------------------


class _BadFile(FileFormatError):
    """What is wrong with a file; ``load_compressed`` prefixes the file's name."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _BadFile(message)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(value: object, low: int, high: int, what: str) -> int:
    _check(
        _is_int(value) and low <= value <= high,
        f"{what} must be an integer in [{low}, {high}], got {value!r}",
    )
    return value  # type: ignore[return-value]


def _finite_float(value: object, what: str, *, positive: bool) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    _check(
        ok,
        f"{what} must be a finite {'positive' if positive else 'non-negative'} number, "
        f"got {value!r}",
    )
    return float(value)  # type: ignore[arg-type]


def _dtype(name: object, what: str) -> torch.dtype:
    _check(isinstance(name, str) and name in _DTYPES, f"{what}: unknown dtype {str(name)[:40]!r}")
    return _DTYPES[name]  # type: ignore[index]


def _shape(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise _BadFile(f"{what}: a shape must be a list of at most {MAX_DIMS} dimensions")
    _check(
        all(_is_int(d) and d >= 0 for d in value),
        f"{what}: shape must be a list of non-negative integers, got {value!r}",
    )
    return tuple(value)


@dataclass(frozen=True)
class _Quant:
    bits: int
    axis: int | None
    qmin: int
    qmax: int
    scale_dtype: torch.dtype
    scale_shape: tuple[int, ...]
    group_size: int | None = None

    @property
    def channels(self) -> int:
        """The number of scales: channels, or channels x groups."""
        return math.prod(self.scale_shape)


@dataclass(frozen=True)
class _Float:
    format: str
    axis: int | None
    scale_dtype: torch.dtype | None
    scale_shape: tuple[int, ...] | None

    @property
    def scales(self) -> int:
        return 0 if self.scale_shape is None else math.prod(self.scale_shape)


@dataclass(frozen=True)
class _Stored:
    """A validated tensor entry whose blob lengths agree with the target model's shape."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    layout: Layout
    stored: int
    nbytes: int
    quant: _Quant | None
    floating: _Float | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def part_sizes(self) -> list[int]:
        """Byte lengths of the blob's parts: [scales, zero points,] index, values."""
        if self.layout.name == "dense":
            index = 0
        elif self.layout.name == "mask":
            index = packed_size(self.numel, 1)
        else:
            index = packed_size(self.stored, self.layout.gap_bits)
        if self.floating is not None:
            f = self.floating
            scales = f.scales * _itemsize(f.scale_dtype) if f.scale_dtype is not None else 0
            return [scales, index, self.stored * _itemsize(FLOAT_DTYPES[f.format])]
        if self.quant is None:
            return [index, self.stored * _itemsize(self.dtype)]
        q = self.quant
        return [
            q.channels * _itemsize(q.scale_dtype),
            packed_size(q.channels, q.bits),
            index,
            packed_size(self.stored, q.bits),
        ]


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _parse_quant(value: object, key: str, shape: tuple[int, ...], version: int) -> _Quant:
    if not isinstance(value, list) or len(value) != (6 if version == 1 else 7):
        raise _BadFile(f"{key}: malformed quantization {str(value)[:80]}")
    bits, axis, qmin, qmax, scale_dtype, scale_shape, *rest = value
    group_size = rest[0] if rest else None
    _check(
        group_size is None or (_is_int(group_size) and group_size > 0 and axis is not None),
        f"{key}: group size {group_size!r} must be null or a positive integer with an axis",
    )
    bits = _int_in(bits, MIN_BITS, MAX_BITS, f"{key}: bits")
    _check(
        axis is None or (_is_int(axis) and 0 <= axis < len(shape)),
        f"{key}: quantization axis {axis!r} is out of range for shape {shape}",
    )
    qmin = _int_in(qmin, -(1 << MAX_BITS), 1 << MAX_BITS, f"{key}: qmin")
    qmax = _int_in(qmax, qmin, qmin + (1 << bits) - 1, f"{key}: qmax")
    dtype = _dtype(scale_dtype, f"{key}: scale")
    _check(dtype.is_floating_point, f"{key}: scale dtype {scale_dtype} is not a float dtype")
    scale_shape = _shape(scale_shape, f"{key}: scale")
    channels = 1 if axis is None else shape[axis]
    if group_size is not None:
        channels *= group_count(shape, axis, group_size)
    _check(
        math.prod(scale_shape) == channels,
        f"{key}: {math.prod(scale_shape)} scales for {channels} channel(s) or groups",
    )
    return _Quant(bits, axis, qmin, qmax, dtype, scale_shape, group_size)


def _parse_float(value: object, key: str, shape: tuple[int, ...]) -> _Float:
    if not isinstance(value, list) or len(value) != 4 or value[0] not in FLOAT_DTYPES:
        raise _BadFile(f"{key}: malformed float format {str(value)[:80]}")
    fmt, axis, scale_dtype, scale_shape = value
    _check(
        axis is None or (_is_int(axis) and 0 <= axis < len(shape)),
        f"{key}: float format axis {axis!r} is out of range for shape {shape}",
    )
    if not fmt.startswith("fp8"):
        _check(scale_dtype is None and scale_shape is None, f"{key}: {fmt} has no scale")
        return _Float(fmt, None, None, None)
    dtype = _dtype(scale_dtype, f"{key}: scale")
    _check(dtype.is_floating_point, f"{key}: scale dtype {scale_dtype} is not a float dtype")
    scales = _shape(scale_shape, f"{key}: scale")
    channels = 1 if axis is None else shape[axis]
    _check(
        len(scales) <= 1 and math.prod(scales) == channels,
        f"{key}: scales of shape {scales} for {channels} channel(s)",
    )
    return _Float(fmt, axis, dtype, scales)


def _parse_stored(entry: dict, key: str, target: torch.Tensor, version: int) -> _Stored:
    dtype = _dtype(entry.get("d"), key)
    shape = _shape(entry.get("s"), key)
    _check(
        shape == tuple(target.shape),
        f"{key} has shape {shape} in the file but {tuple(target.shape)} in the model",
    )
    _check(
        dtype == target.dtype,
        f"{key} has dtype {dtype} in the file but {target.dtype} in the model",
    )
    numel = math.prod(shape)
    name = entry.get("e")
    _check(
        name in LAYOUTS, f"{key}: unknown encoding {str(name)[:40]!r} (expected one of {LAYOUTS})"
    )
    gap_bits = (
        _int_in(entry.get("w"), 1, MAX_GAP_BITS, f"{key}: gap width") if name == "gaps" else 0
    )
    stored = numel if name == "dense" else _int_in(entry.get("n"), 0, numel, f"{key}: stored count")
    quant, floating = None, None
    _check(version > 1 or "f" not in entry, f"{key}: a float format in a version-1 file")
    _check("q" not in entry or "f" not in entry, f"{key}: both quantized and a float format")
    if "q" in entry:
        quant = _parse_quant(entry["q"], key, shape, version)
    if "f" in entry:
        floating = _parse_float(entry["f"], key, shape)
    _check(
        (quant is None and floating is None) or dtype.is_floating_point,
        f"{key}: a quantized tensor must have a float dtype, not {dtype}",
    )
    nbytes = _int_in(entry.get("L"), 0, 1 << 62, f"{key}: blob length")
    layout = Layout(cast(str, name), gap_bits)  # one of LAYOUTS, checked above
    item = _Stored(key, dtype, shape, layout, stored, nbytes, quant, floating)
    expected = sum(item.part_sizes())
    _check(
        nbytes == expected,
        f"{key}: blob of {nbytes} bytes, but its shape {shape}, encoding and bit width "
        f"need {expected}",
    )
    return item


def _parse_tensors(
    value: object, target: dict[str, torch.Tensor], version: int
) -> tuple[list[_Stored], dict[str, tuple[str, bool]]]:
    """Validated stored entries and aliases (key -> (source, shares record))."""
    if not isinstance(value, list):
        raise _BadFile("header has no tensor list")
    stored: list[_Stored] = []
    aliases: dict[str, tuple[str, bool]] = {}
    seen: dict[str, _Stored] = {}
    for entry in value:
        _check(
            isinstance(entry, dict) and isinstance(entry.get("k"), str),
            f"malformed tensor entry {str(entry)[:80]}",
        )
        key = entry["k"]
        _check(key not in seen and key not in aliases, f"{key} is stored twice")
        _check(key in target, f"{key} is in the file but not in the model's state_dict")
        if "a" in entry:
            # a hand-made header may alias a list or a dict: unhashable, so no lookup
            source = seen.get(entry["a"]) if isinstance(entry["a"], str) else None
            if source is None:
                raise _BadFile(
                    f"{key} aliases {entry['a']!r}, which is not an earlier stored tensor"
                )
            _check(
                tuple(target[key].shape) == source.shape and target[key].dtype == source.dtype,
                f"{key} is tied to {source.key} in the file, but the model's {key} has shape "
                f"{tuple(target[key].shape)} and dtype {target[key].dtype}",
            )
            shares_record = entry.get("r", 0) == 1
            _check(
                not shares_record or source.quant is not None or source.floating is not None,
                f"{key} shares the quantization of {source.key}, which is not quantized",
            )
            aliases[key] = (source.key, shares_record)
            continue
        item = _parse_stored(entry, key, target[key], version)
        seen[key] = item
        stored.append(item)
    missing = [key for key in target if key not in seen and key not in aliases]
    _check(
        not missing, f"the file lacks {len(missing)} state_dict entries of the model: {missing[:5]}"
    )
    return stored, aliases


def _parse_hooks(value: object, model: nn.Module) -> list[tuple[str, AnyActivationHook]]:
    if not isinstance(value, list):
        raise _BadFile("header has no hook list")
    modules = dict(model.named_modules())
    _check(
        len(value) <= MAX_HOOKS_PER_MODULE * len(modules),
        f"the header lists {len(value)} activation hooks, more than "
        f"{MAX_HOOKS_PER_MODULE} for each of the model's {len(modules)} modules",
    )
    hooks: list[tuple[str, AnyActivationHook]] = []
    for entry in value:
        _check(
            isinstance(entry, list) and 2 <= len(entry) <= 7 and isinstance(entry[0], str),
            f"malformed activation hook {str(entry)[:80]}",
        )
        name, kind, *params = entry
        _check(
            name in modules, f"activation hook on module {name!r}, which the model does not have"
        )
        if kind == "fq" and len(params) == 5:
            scale = _finite_float(params[0], f"hook on {name!r}: scale", positive=True)
            bits = _int_in(params[2], MIN_BITS, MAX_BITS, f"hook on {name!r}: bits")
            qmin = _int_in(params[3], -(1 << MAX_BITS), 1 << MAX_BITS, f"hook on {name!r}: qmin")
            qmax = _int_in(params[4], qmin, qmin + (1 << bits) - 1, f"hook on {name!r}: qmax")
            zero_point = _int_in(params[1], qmin, qmax, f"hook on {name!r}: zero point")
            hooks.append((name, ActivationFakeQuantize(scale, zero_point, bits, qmin, qmax)))
        elif kind == "fcast" and len(params) == 1 and params[0] in FLOAT_FORMATS:
            hooks.append((name, ActivationFloatCast(params[0])))
        elif kind == "dyn" and len(params) == 1:
            bits = _int_in(params[0], MIN_BITS, MAX_BITS, f"hook on {name!r}: bits")
            hooks.append((name, ActivationDynamicQuantize(bits)))
        elif kind == "prune" and len(params) == 1:
            hooks.append(
                (
                    name,
                    ActivationPrune(
                        _finite_float(params[0], f"hook on {name!r}: beta", positive=False)
                    ),
                )
            )
        else:
            raise _BadFile(f"unknown activation hook {str(entry)[:80]}")
    return hooks


def _header_limit(model: nn.Module, target: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The most bytes and JSON objects a header of a file for ``model`` can hold."""
    longest_key = max((len(key) for key in target), default=0)
    names = [name for name, _ in model.named_modules()]
    longest_name = max((len(name) for name in names), default=0)
    per_entry = _ENTRY_BYTES + _ESCAPED * longest_key
    per_hook = _HOOK_BYTES + _ESCAPED * longest_name
    hooks = MAX_HOOKS_PER_MODULE * len(names)
    # objects: the document and one per entry, with room for a few stray ones, so that a
    # header naming a tensor too many gets the error that says which
    return 64 + len(target) * per_entry + hooks * per_hook, 2 * len(target) + 16


def _bounded_json(text: bytes, max_objects: int) -> Any:
    """``text`` parsed, refusing early more objects than ``max_objects`` and non-numbers."""
    objects = 0

    def count(pairs: list[tuple[str, Any]]) -> dict:
        nonlocal objects
        objects += 1
        _check(objects <= max_objects, f"the header holds more than {max_objects} objects")
        return dict(pairs)

    def refuse(name: str) -> None:
        raise _BadFile(f"the header holds {name}, which is not a JSON number")

    try:
        return json.loads(text.decode("utf-8"), object_pairs_hook=count, parse_constant=refuse)
    except _BadFile:
        raise
    except (ValueError, RecursionError) as err:
        raise _BadFile(f"the header is not valid JSON ({err})") from None


def _read_header(f: Any, size: int, limits: tuple[int, int]) -> tuple[dict, int, int, int]:
    """The header document, the data section's offset, the stored CRC and the version.

    ``limits``: the most bytes the header may decompress to and the most JSON objects it
    may hold, both derived from the model (``_header_limit``).
    """
    prefix = f.read(_PREFIX.size)
    _check(
        len(prefix) == _PREFIX.size,
        f"the file is {size} bytes, shorter than the {_PREFIX.size}-byte prefix "
        "(truncated, or not a pytest-compress file)",
    )
    magic, version, header_len, crc = _PREFIX.unpack(prefix)
    _check(
        magic == MAGIC,
        f"wrong magic bytes {magic!r} (expected {MAGIC!r}): not a pytest-compress file",
    )
    _check(
        version <= FORMAT_VERSION,
        f"format version {version} is newer than this pytest-compress reads "
        f"(up to {FORMAT_VERSION}); upgrade pytest-compress",
    )
    _check(version in _VERSIONS, f"unsupported format version {version}")
    _check(
        header_len <= size - _PREFIX.size,
        f"the header length {header_len} runs past the end of the {size}-byte file (truncated?)",
    )
    max_bytes, max_objects = limits
    decompressor = zlib.decompressobj()
    try:
        text = decompressor.decompress(f.read(header_len), max_bytes + 1)
    except zlib.error as err:
        raise _BadFile(f"the header is not valid zlib data ({err})") from None
    _check(
        len(text) <= max_bytes,
        f"the header decompresses to more than {max_bytes} bytes, more than a file for "
        "this model can need",
    )
    _check(decompressor.eof, "the header is truncated")
    _check(not decompressor.unused_data, "stray bytes after the compressed header")
    doc = _bounded_json(text, max_objects)
    _check(
        isinstance(doc, dict) and sorted(doc) == ["h", "t"],
        'the header is not a JSON object of exactly "t" and "h"',
    )
    return doc, _PREFIX.size + header_len, crc, version


def _crc_of(f: Any, start: int, stop: int | None, crc: int = 0) -> int:
    """``crc`` continued over the file's bytes ``start .. stop`` (None: to the end),
    streamed a megabyte at a time."""
    f.seek(start)
    left = math.inf if stop is None else stop - start
    while left > 0 and (chunk := f.read(int(min(left, 1 << 20)))):
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


_CORRUPTED = "checksum mismatch: the file is corrupted"


def _decode_raw(item: _Stored, dest: torch.Tensor, index: np.ndarray, values: np.ndarray) -> None:
    decode_raw(dest, index, values, item.layout, item.stored)


def _scales(item: _Stored, blob: np.ndarray, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    scale = torch.from_numpy(blob.copy()).view(dtype).reshape(shape)
    _check(
        bool(torch.isfinite(scale).all() and (scale > 0).all()),
        f"{item.key}: scales must be finite and positive",
    )
    return scale


def _decode_quantized(item: _Stored, dest: torch.Tensor, parts: list[np.ndarray]) -> QuantParams:
    """Codes decoded into ``dest`` a block at a time (``decoding.py``); the record back."""
    q = item.quant
    assert q is not None
    scale_blob, zp_blob, index, values = parts
    scale = _scales(item, scale_blob, q.scale_dtype, q.scale_shape)
    zero_point = unpack_bits(zp_blob, q.bits, q.channels).astype(np.int64) + q.qmin
    _check(
        not zero_point.size or zero_point.max() <= q.qmax,
        f"{item.key}: a zero point exceeds qmax {q.qmax}",
    )
    zp = torch.from_numpy(zero_point.astype(np.int32)).reshape(q.scale_shape)
    compute = scale_dtype_for(item.dtype)  # as quant.dequantize computes
    codes = Codes(
        values,
        q.bits,
        q.qmin,
        q.qmax,
        scale.to(compute).reshape(-1),
        (zp - q.qmin).to(compute).reshape(-1),  # codes are stored less qmin: the same c - z
        item.dtype,
        Scales.of(item.shape, q.axis, q.group_size),
    )
    decode_codes(dest, index, item.layout, item.stored, codes)
    return QuantParams(scale, zp, q.bits, q.axis, q.qmin, q.qmax, q.group_size)


def _decode_float(item: _Stored, dest: torch.Tensor, parts: list[np.ndarray]) -> FloatParams:
    """A float format's elements decoded into ``dest`` a block at a time; its record."""
    f = item.floating
    assert f is not None
    scale_blob, index, values = parts
    scale = None
    if f.scale_dtype is not None and f.scale_shape is not None:
        scale = _scales(item, scale_blob, f.scale_dtype, f.scale_shape)
    element = FLOAT_DTYPES[f.format]
    elements = DecodedElements(
        values.reshape(item.stored, _itemsize(element)),
        element,
        None if scale is None else scale.to(torch.float32).reshape(-1),
        f"{item.key}: {f.format}",
    )
    scales = Scales.of(item.shape, f.axis if scale is not None else None, None)
    fill(dest, item.layout, blocks(index, item.layout, scales, item.stored), elements)
    return FloatParams(f.format, scale, f.axis)


def _split(blob: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    parts, start = [], 0
    for size in sizes:
        parts.append(blob[start : start + size])
        start += size
    return parts


@dataclass(frozen=True)
class _Contents:
    """A checked file's entries, ties and hooks, and where its tensor data starts."""

    stored: list[_Stored]
    aliases: dict[str, tuple[str, bool]]
    hooks: list
    data_offset: int
    crc: int  # of everything after the prefix; checked as the blobs are read


def _read_contents(f: Any, size: int, model: nn.Module, target: dict) -> _Contents:
    """The header, checked against the model, and the data's length, checked against the
    file: a wrong file costs no more than its header before its data is read."""
    doc, data_offset, crc, version = _read_header(f, size, _header_limit(model, target))
    stored, aliases = _parse_tensors(doc.get("t"), target, version)
    hooks = _parse_hooks(doc.get("h"), model)
    data_len = sum(item.nbytes for item in stored)
    actual = size - data_offset
    _check(
        actual >= data_len,
        f"truncated: the header describes {data_len} bytes of tensor data, the file holds {actual}",
    )
    _check(actual == data_len, f"{actual - data_len} unexpected bytes after the tensor data")
    return _Contents(stored, aliases, hooks, data_offset, crc)


def _decode_into(
    item: _Stored, dest: torch.Tensor, blob: np.ndarray
) -> QuantParams | FloatParams | None:
    """One entry's blob decoded into ``dest``; its quantization record, if any."""
    parts = _split(blob, item.part_sizes())
    try:
        if item.floating is not None:
            return _decode_float(item, dest, parts)
        if item.quant is None:
            _decode_raw(item, dest, *parts)
            return None
        return _decode_quantized(item, dest, parts)
    except _BadFile:
        raise
    except (FileFormatError, ValueError, RuntimeError, IndexError, OverflowError) as err:
        raise _BadFile(f"{item.key}: {err}") from None


def _read_one(
    f: Any, item: _Stored, dest: torch.Tensor, crc: RunningCrc
) -> QuantParams | FloatParams | None:
    """The next blob read, checksummed beside its decoding into ``dest``; its record. The
    last blob is released once its CRC is taken, so one is in memory at a time."""
    crc.settle()
    blob = np.empty(item.nbytes, dtype=np.uint8)  # writable: torch views it as is
    _check(f.readinto(blob.data) == item.nbytes, "the file changed while loading")
    crc.add(blob.data)
    return _decode_into(item, dest, blob)


def _read_tensors(
    f: Any, contents: _Contents, loaded: nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, QuantParams | FloatParams]]:
    """Every entry decoded, in place into ``loaded``'s own tensor where it can be (see
    ``_destinations``), else into a new one; one blob in memory at a time."""
    destinations = _destinations(loaded, contents.stored)
    tensors: dict[str, torch.Tensor] = {}
    quantized: dict[str, QuantParams | FloatParams] = {}
    # The CRC is taken over each blob as it is read (one read of the file, not two); every
    # value is checked as it is decoded, so a damaged blob never gets further than its
    # tensor, and a file whose checksum fails says so whatever its damage decoded to.
    with RunningCrc(_crc_of(f, _PREFIX.size, contents.data_offset)) as crc:
        try:
            for item in contents.stored:
                dest = destinations.get(item.key)
                if dest is None:
                    dest = torch.empty(item.shape, dtype=item.dtype)
                mapping = _read_one(f, item, dest, crc)
                tensors[item.key] = dest
                if mapping is not None:
                    quantized[item.key] = mapping
        except _BadFile:
            _check(_crc_of(f, f.tell(), None, crc.value) == contents.crc, _CORRUPTED)
            raise
        _check(crc.value == contents.crc, _CORRUPTED)
    for key, (source, shares_record) in contents.aliases.items():
        tensors[key] = tensors[source]
        if shares_record:
            quantized[key] = quantized[source]
    return tensors, quantized


def _slot(model: nn.Module, key: str) -> tuple[str, dict, str] | None:
    """Where state_dict entry ``key`` lives: ("parameter" or "buffer", the dict, its name)."""
    prefix, _, name = key.rpartition(".")
    try:
        owner = model.get_submodule(prefix)
    except AttributeError:  # an entry a custom _save_to_state_dict made up
        return None
    for kind, slots in (("parameter", owner._parameters), ("buffer", owner._buffers)):
        if slots.get(name) is not None:
            return kind, slots, name
    return None


def _tie(model: nn.Module, aliases: dict[str, tuple[str, bool]]) -> None:
    """Make the model share each aliased tensor with its source, as the saved model did."""
    for key, (source, _) in aliases.items():
        mine, theirs = _slot(model, key), _slot(model, source)
        if mine is not None and theirs is not None and mine[0] == theirs[0]:
            mine[1][mine[2]] = theirs[1][theirs[2]]


def _check_model_ties(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """A model that ties two entries can only hold the file if their values agree."""
    groups: dict[tuple, list[str]] = {}
    for key, t in model.state_dict().items():
        storage = _storage_id(t)
        if storage is not None:
            groups.setdefault(storage, []).append(key)
    for keys in groups.values():
        first = tensors[keys[0]]
        for key in keys[1:]:
            same = tensors[key] is first or torch.equal(
                tensors[key].reshape(-1).view(torch.uint8), first.reshape(-1).view(torch.uint8)
            )
            _check(
                same,
                f"the model ties {keys[0]} and {key}, but the file holds different values for them",
            )


def _replace_activation_hooks(model: nn.Module, hooks: list) -> None:
    """The file's activation hooks in place of any the architecture model brought along."""
    remove_activation_hooks(model)
    for name, hook in hooks:
        add_activation_hook(model.get_submodule(name), hook)


def _destinations(model: nn.Module, stored: list[_Stored]) -> dict[str, torch.Tensor]:
    """The copy's own tensors that entries decode straight into: a parameter or buffer
    that loads plainly (``_plain_slot``: not one a custom ``state_dict`` or custom loading
    handles), on the CPU, contiguous, of the
    entry's dtype and shape, and the first entry to reach its storage: a second stored
    entry of tensors the model ties is decoded apart, so the two can be compared."""
    state = model.state_dict()  # detached views of the copy's own tensors
    claimed: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for item in stored:
        slot, t = _plain_slot(model, item.key), state.get(item.key)
        if slot is None or t is None or slot.data_ptr() != t.data_ptr():
            continue
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            continue
        if t.dtype != item.dtype or tuple(t.shape) != item.shape:
            continue
        storage = t.untyped_storage().data_ptr()
        if storage not in claimed:
            claimed.add(storage)
            out[item.key] = t.detach()
    return out


def _loads_plainly(module: nn.Module) -> bool:
    """Whether ``load_state_dict`` overwrites this module's tensors whole (no custom
    loading, no pre-hooks that could leave some of them as they were)."""
    custom = type(module)._load_from_state_dict is not nn.Module._load_from_state_dict
    return not custom and not module._load_state_dict_pre_hooks


def _plain_slot(model: nn.Module, key: str) -> torch.Tensor | None:
    """The parameter or buffer behind state_dict entry ``key``, when ``load_state_dict``
    overwrites it whole (its module does not load in a way of its own)."""
    slot = _slot(model, key)
    if slot is None or not _loads_plainly(model.get_submodule(key.rpartition(".")[0])):
        return None
    tensor = slot[1][slot[2]]
    return tensor if _plain(tensor) else None


def _plain(t: torch.Tensor) -> bool:
    """A parameter or tensor of torch's own (a subclass, such as the low-memory mode's
    weights, may have no storage of its own to decode into or to count)."""
    return type(t) in (nn.Parameter, torch.Tensor)


def _empty_twins(model: nn.Module, target: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """For ``copy.deepcopy``'s memo: uninitialised twins of the tensors the file will
    overwrite whole, so the copy does not first copy values that are thrown away. Only a
    plain parameter or buffer that shares its storage with no other tensor of the model
    (a deep copy keeps such sharing, which fresh twins would break)."""
    owned = {id(t) for t in sole_owners(model)}
    twins: dict[int, torch.Tensor] = {}
    for key in target:
        t = _plain_slot(model, key)
        if t is not None and id(t) in owned:
            twins[id(t)] = twin(t, torch.empty_like(t.data, memory_format=torch.preserve_format))
    return twins


def _materialised_copy(model: nn.Module, target: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose state the file then fills: the tensors it
    overwrites whole are allocated, not copied; one on the meta device gets empty CPU
    tensors, provided the file fills every one of them."""
    on_meta = [
        name
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t.device.type == "meta"
    ]
    if not on_meta:
        memo: dict[int, Any] = dict(_empty_twins(model, target))
        return copy.deepcopy(model, memo)
    outside = [name for name in on_meta if name not in target]
    _check(
        not outside,
        f"the model is on the meta device, and {outside[:5]} (not in its state_dict, so not "
        "in the file) would have no values; build the model on a real device",
    )
    loaded = copy.deepcopy(model)
    loaded.to_empty(device="cpu", recurse=True)
    return loaded


def load_compressed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """A copy of ``model`` holding what ``save_compressed`` wrote to ``path``.

    ``model`` gives the architecture (a freshly built float model will do) and is never
    modified. The copy gets the file's tensors, ties, compression record and activation
    hooks, so its outputs equal the saved model's exactly. A truncated, corrupted or
    foreign file, or one saved from another architecture, raises ``FileFormatError`` (a
    ``ValueError``) naming the file and the problem.

    The header is checked against the model and the file's length before the copy is
    made; each tensor is then read and decoded a block at a time straight into the copy's
    own tensor (every value checked, the CRC taken as the blobs are read), so a load
    costs the copy plus one tensor's blob and a few blocks.
    """
    path = os.fspath(path)
    target = model.state_dict()
    try:
        with open(path, "rb") as f:
            contents = _read_contents(f, os.fstat(f.fileno()).st_size, model, target)
            loaded = _materialised_copy(model, target)
            _tie(loaded, contents.aliases)
            tensors, quantized = _read_tensors(f, contents, loaded)
        _check_model_ties(loaded, tensors)
    except _BadFile as err:
        raise FileFormatError(f"cannot load {path}: {err}") from None
    ordered = {key: tensors[key] for key in target}
    record = {key: quantized[key] for key in target if key in quantized}
    with torch.no_grad():
        loaded.load_state_dict(ordered, strict=True)  # in place entries: copies onto themselves
    _replace_activation_hooks(loaded, contents.hooks)
    set_record(loaded, CompressionRecord(quantized=record))
    return loaded
