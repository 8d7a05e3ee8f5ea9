"""Float weight formats: fp16 and bf16 casts, and fp8 (e4m3, e5m2) with a scale per channel.

fp16 and bf16 are plain casts (round to nearest even, as ``Tensor.to``): no scale. fp8
follows torchao's float8 weight-only recipe: each output channel (or the whole tensor)
gets ``scale = amax / largest`` (448 for e4m3, 57344 for e5m2) so its range fits, the
weight is divided by it, clamped to the format's range and cast; the value it stands for
is ``float32(element) * scale``. The simulation computes exactly that, so the codes a
file stores (``FloatParams.elements``) decode to the simulated weight bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError
from .quant import check_finite, check_scale, round_up_to

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8-e4m3": torch.float8_e4m3fn,
    "fp8-e5m2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class FloatParams:
    """How a parameter was cast: its format and, for fp8, the scales along ``axis``
    (one per channel, or a 0-d tensor for the whole tensor)."""

    format: str
    scale: torch.Tensor | None = None
    axis: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return FLOAT_DTYPES[self.format]

    def scale_along(self, x: torch.Tensor) -> torch.Tensor:
        assert self.scale is not None
        scale = self.scale.to(torch.float32)
        if self.axis is None:
            return scale
        view = [1] * x.dim()
        view[self.axis] = -1
        return scale.reshape(view)

    def elements(self, values: torch.Tensor, name: str) -> torch.Tensor:
        """The stored elements (in ``dtype``) behind cast ``values``; ``ModelError`` when
        ``values`` are not exactly what those elements decode to (changed since)."""
        if self.scale is None:
            stored = values.to(self.dtype)
        else:
            largest = torch.finfo(self.dtype).max
            scaled = values.to(torch.float32) / self.scale_along(values)
            stored = scaled.clamp_(-largest, largest).to(self.dtype)
        if not torch.equal(self.decode(stored, values.dtype), values):
            raise ModelError(
                f"{name} is no longer representable in {self.format} (it changed after "
                "quantize_model); quantize the model again before saving it"
            )
        return stored

    def decode(self, stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The values ``stored`` elements stand for, in ``dtype``."""
        if self.scale is None:
            return stored.to(dtype)
        return (stored.to(torch.float32) * self.scale_along(stored)).to(dtype)


def float_params(
    x: torch.Tensor,
    fmt: str,
    *,
    axis: int | None,
    name: str,
    scale_dtype: torch.dtype | None = None,
) -> FloatParams:
    """The ``FloatParams`` casting ``x`` to ``fmt``: fp8 scales ``amax / largest`` (float32
    unless ``scale_dtype`` says otherwise; rounded up to it), 1 where a channel is zero."""
    check_finite(x, name)
    if not fmt.startswith("fp8"):
        return FloatParams(fmt)
    largest = torch.finfo(FLOAT_DTYPES[fmt]).max
    if axis is None:
        amax = x.detach().abs().amax() if x.numel() else torch.zeros(())
    else:
        flat = x.detach().movedim(axis, 0).reshape(x.shape[axis], -1).abs()
        amax = flat.amax(dim=1) if flat.shape[1] else torch.zeros(x.shape[axis])
    scale = amax.to(torch.float64) / largest
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if scale_dtype in (torch.float16, torch.bfloat16):
        scale = round_up_to(scale, scale_dtype)
    else:
        # float32 rounds to nearest: an amax a hair past largest * scale is clamped there
        scale = torch.clamp(scale.to(torch.float32), min=torch.finfo(torch.float32).tiny)
    check_scale(scale, name)
    return FloatParams(fmt, scale, axis)


def cast_to_format(x: torch.Tensor, params: FloatParams, name: str) -> torch.Tensor:
    """``x`` rounded to ``params``' format, in ``x``'s dtype; ``ModelError`` naming ``name``
    when a weight overflows the format (fp16 beyond 65504, bf16 near float32's limit)."""
    return params.decode(cast_elements(x, params, name), x.dtype)


def cast_elements(x: torch.Tensor, params: FloatParams, name: str) -> torch.Tensor:
    """The format's elements (``params.dtype``) that ``cast_to_format`` decodes: ``x``
    itself when it already has that dtype and no scale (bf16 of a bf16 model)."""
    if params.scale is None:
        stored = x.to(params.dtype)
    else:
        largest = torch.finfo(params.dtype).max
        scaled = x.to(torch.float32) / params.scale_along(x)
        stored = scaled.clamp_(-largest, largest).to(params.dtype)
    if not bool(torch.isfinite(stored.to(torch.float32)).all()):
        overflow = int((~torch.isfinite(stored.to(torch.float32))).sum())
        raise ModelError(
            f"{name}: {overflow} weight{'s overflow' if overflow != 1 else ' overflows'} "
            f"{params.format} (largest {torch.finfo(params.dtype).max:g}) and would become "
            "infinite; keep this layer float (exclude it) or use a wider format"
        )
    return stored
