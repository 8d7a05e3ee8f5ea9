"""What a compressed copy remembers about how it was compressed.

``quantize_model`` replaces weights with their fake-quantized values and records here
the parameters that produced them, so ``save_compressed`` can recover the exact integer
codes and bit-pack them. The record lives on the copy (never on the user's model) as a
plain attribute, so ``copy.deepcopy`` and pickling carry it along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .floats import FloatParams
from .quant import QuantizedTensor, dequantize, quantize_checked, quantize_with

_RECORD_ATTR = "_pytest_compress_record"

# Tensors found on their grid inside ``grid_memo``, by ``_grid_key``: each with the tensor
# and mapping themselves, held so that no other tensor takes their address or id meanwhile.
_ON_GRID: ContextVar[dict[tuple, tuple[torch.Tensor, Any]] | None] = ContextVar(
    "pytest_compress_on_grid", default=None
)


# Nonzero counts of CPU tensors inside ``grid_memo``, by ``_grid_key``, each with its tensor.
_NONZERO: ContextVar[dict[tuple, tuple[torch.Tensor, int]] | None] = ContextVar(
    "pytest_compress_nonzero", default=None
)


@contextmanager
def grid_memo() -> Iterator[None]:
    """Inside it, a CPU tensor found on its grid is not checked again while it is unchanged
    (its version counter is the same): the file size and the invariant gate of one check
    read the same weights with the same mappings, and the check is a quantize-dequantize
    pass over every weight. Likewise its count of nonzero elements, which the file size
    counts and the sparsity reads."""
    token, counts = _ON_GRID.set({}), _NONZERO.set({})
    try:
        yield
    finally:
        _NONZERO.reset(counts)
        _ON_GRID.reset(token)


def remember_nonzero(values: torch.Tensor, count: int) -> None:
    """Inside ``grid_memo``: ``values`` (unchanged since) hold ``count`` nonzero elements."""
    memo, key = _NONZERO.get(), _grid_key(values, None)
    if memo is not None and key is not None:
        memo[key] = (values, count)


def remembered_nonzero(values: torch.Tensor) -> int | None:
    """The count ``remember_nonzero`` kept for ``values`` (any view of the same memory,
    unchanged), or None."""
    memo, key = _NONZERO.get(), _grid_key(values, None)
    if memo is None or key is None or key not in memo:
        return None
    return memo[key][1]


def _grid_key(values: torch.Tensor, params: Any) -> tuple | None:
    """What identifies ``values`` (any view of the same memory, unchanged) with ``params``;
    None for what the memo does not keep (another device: its ``.cpu()`` copies come and go)."""
    if type(values) is not torch.Tensor or values.device.type != "cpu":
        return None
    shape = (values.dtype, tuple(values.shape), values.stride(), values.storage_offset())
    return (values.untyped_storage().data_ptr(), *shape, values._version, id(params))


@dataclass(frozen=True)
class QuantParams:
    """The mapping a parameter was fake-quantized with: codes = clamp(round(w / s) + z),
    per tensor, per channel along ``axis``, or per group of ``group_size`` of a channel's
    inputs (``scale`` and ``zero_point`` then (channels, groups))."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    axis: int | None
    qmin: int
    qmax: int
    group_size: int | None = None

    @classmethod
    def of(cls, q: QuantizedTensor) -> QuantParams:
        return cls(q.scale, q.zero_point, q.bits, q.axis, q.qmin, q.qmax, q.group_size)

    def stored_codes(self, values: torch.Tensor, name: str, *, check: bool = True) -> torch.Tensor:
        """``codes - qmin`` of fake-quantized ``values`` in their narrowest dtype (uint8 up
        to 8 bits, else uint16), shaped like ``values``; ``ModelError`` if they left the
        grid (``check`` False: already known to be on it). Computed and checked block by
        block: no int32 or float32 copy of the whole."""
        dtype = torch.uint8 if self.qmax - self.qmin < 1 << 8 else torch.uint16
        checking = check and not self.known_on_grid(values)
        codes, on_grid = quantize_checked(
            values,
            self.scale,
            self.zero_point,
            qmin=self.qmin,
            qmax=self.qmax,
            axis=self.axis,
            group_size=self.group_size,
            dtype=dtype,
            offset=self.qmin,
            check=checking,
        )
        if not checking:
            return codes
        if not on_grid:
            raise ModelError(
                f"{name} is no longer on its {self.bits}-bit quantization grid (it changed "
                "after quantize_model); quantize the model again before saving it"
            )
        self._remember_on_grid(values)
        return codes

    def on_grid(self, values: torch.Tensor, name: str) -> bool:
        """Every value of ``values`` is exactly one of the mapping's ``2**bits`` codes."""
        if self.known_on_grid(values):
            return True
        try:
            self.stored_codes(values, name)  # narrow codes, block by block
        except ModelError:
            return False
        return True

    def known_on_grid(self, values: torch.Tensor) -> bool:
        """``values`` were found on this grid inside the current ``grid_memo``, unchanged."""
        memo, key = _ON_GRID.get(), _grid_key(values, self)
        return memo is not None and key is not None and key in memo

    def _remember_on_grid(self, values: torch.Tensor) -> None:
        memo, key = _ON_GRID.get(), _grid_key(values, self)
        if memo is not None and key is not None:
            memo[key] = (values, self)

    def codes_of(self, values: torch.Tensor, name: str) -> QuantizedTensor:
        """The codes behind fake-quantized ``values``; ``ModelError`` if they left the grid."""
        codes = quantize_with(
            values,
            self.scale,
            self.zero_point,
            qmin=self.qmin,
            qmax=self.qmax,
            axis=self.axis,
            group_size=self.group_size,
        )
        q = QuantizedTensor(
            codes,
            self.scale,
            self.zero_point,
            self.bits,
            self.axis,
            self.qmin,
            self.qmax,
            values.dtype,
            self.group_size,
        )
        if not torch.equal(dequantize(q), values):
            raise ModelError(
                f"{name} is no longer on its {self.bits}-bit quantization grid (it changed "
                "after quantize_model); quantize the model again before saving it"
            )
        return q


@dataclass
class CompressionRecord:
    """Per state_dict key, the quantization mapping of each fake-quantized tensor: integer
    codes (``QuantParams``) or a float format (``FloatParams``)."""

    quantized: dict[str, QuantParams | FloatParams] = field(default_factory=dict)


def get_record(model: nn.Module) -> CompressionRecord:
    """The model's record, or an empty one for a model pytest-compress did not compress."""
    return model.__dict__.get(_RECORD_ATTR) or CompressionRecord()


def set_record(model: nn.Module, record: CompressionRecord) -> None:
    model.__dict__[_RECORD_ATTR] = record
