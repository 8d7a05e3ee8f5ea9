"""Hypothesis strategies for testing code that compresses PyTorch models.

``float_tensors`` draws finite floating-point tensors, mixing in the cases that break
quantization code: constant and all-zero tensors, many ties, tiny and huge magnitudes,
subnormals and single elements. ``quant_specs`` and ``prune_specs`` draw valid
``QuantSpec`` and ``PruneSpec`` recipes. Invalid arguments raise
``hypothesis.errors.InvalidArgument`` when the strategy is created.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from .engine.specs import (
    FLOAT_FORMATS,
    FORMATS,
    MAX_BITS,
    METHODS,
    MIN_BITS,
    NORMS,
    OBSERVERS,
    PARAMETER_TARGETS,
    SCALE_DTYPES,
    SCOPES,
    PruneSpec,
    QuantSpec,
)

__all__ = ["float_tensors", "prune_specs", "quant_specs"]

# bfloat16 has no numpy dtype: it is drawn as float32 within bfloat16-representable
# bounds and rounded, which keeps every value within those bounds.
_NUMPY_DTYPES: dict[torch.dtype, tuple[type[np.floating[Any]], Literal[16, 32, 64]]] = {
    torch.float16: (np.float16, 16),
    torch.float32: (np.float32, 32),
    torch.float64: (np.float64, 64),
    torch.bfloat16: (np.float32, 32),
}
# Upper bounds on max|x| that a drawn tensor may pick, so whole tensors come out tiny,
# subnormal or huge rather than only single elements (None: the full bounds).
_MAGNITUDES = (None, 1.0, 1e-3, 1e3, 1e-30, 1e30, 1e-40, 1e-300, 1e300, 1e-310)


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, got {value!r}")


def _representable_bounds(lo: float, hi: float, dtype: torch.dtype) -> tuple[float, float] | None:
    """[lo, hi] shrunk to the nearest values of ``dtype`` inside it; None if there are none."""
    largest = torch.finfo(dtype).max
    want_lo = torch.tensor(max(lo, -largest), dtype=torch.float64)
    want_hi = torch.tensor(min(hi, largest), dtype=torch.float64)
    low, high = want_lo.to(dtype), want_hi.to(dtype)
    if low.double() < want_lo:
        low = torch.nextafter(low, torch.tensor(math.inf, dtype=dtype))
    if high.double() > want_hi:
        high = torch.nextafter(high, torch.tensor(-math.inf, dtype=dtype))
    return (float(low), float(high)) if low <= high else None


def _shape_strategy(shape: object) -> st.SearchStrategy[tuple[int, ...]]:
    if shape is None:
        return hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
    if isinstance(shape, st.SearchStrategy):
        return shape
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (tuple, list, torch.Size)) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        return st.just(tuple(shape))
    raise InvalidArgument(
        f"shape must be None, a tuple of non-negative ints or a strategy of them, got {shape!r}"
    )


def _to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array, copy=True)).to(dtype)
    if not torch.isfinite(tensor).all():
        raise InvalidArgument(
            f"float_tensors draws finite {dtype} tensors only; elements gave {array!r}"
        )
    return tensor


@st.composite
def _nasty_tensors(draw, shapes, dtype, bands):
    shape = draw(shapes)
    # The full bounds half the time, else a band of smaller magnitude.
    lo, hi = draw(st.just(bands[0]) | st.sampled_from(bands[1:] or bands))
    np_dtype, width = _NUMPY_DTYPES[dtype]
    values = st.floats(lo, hi, width=width, allow_nan=False, allow_infinity=False)
    ends = st.sampled_from(sorted({lo, hi, min(max(0.0, lo), hi)}))
    kind = draw(st.sampled_from(("any", "span", "spread", "ties", "constant")))
    if kind == "constant":
        array = np.full(shape, draw(values | ends), dtype=np_dtype)
    elif kind == "ties":
        pool = draw(st.lists(values | ends, min_size=1, max_size=3))
        array = draw(hnp.arrays(np_dtype, shape, elements=st.sampled_from(pool), fill=st.nothing()))
    elif kind in ("span", "spread"):
        # Values between two ends (the band's own for "span", so ranges reach the dtype's
        # extremes), often equal to the ends; a * (1 - u) + b * u stays within [a, b] up
        # to rounding (clamped), even where b - a would overflow.
        a, b = (lo, hi) if kind == "span" else sorted((draw(ends | values), draw(ends | values)))
        fractions = st.floats(0, 1) | st.sampled_from((0.0, 1.0))
        u = draw(hnp.arrays(np.float64, shape, elements=fractions, fill=st.nothing()))
        spread = torch.from_numpy(np.asarray(a * (1 - u) + b * u)).to(dtype)
        return torch.clamp(spread, a, b) if spread.numel() else spread
    else:
        array = draw(hnp.arrays(np_dtype, shape, elements=values, fill=st.nothing()))
    return _to_tensor(array, dtype)


def float_tensors(
    *,
    shape: Sequence[int] | int | st.SearchStrategy[tuple[int, ...]] | None = None,
    dtype: torch.dtype = torch.float32,
    min_value: float = -1e6,
    max_value: float = 1e6,
    elements: st.SearchStrategy[float] | None = None,
) -> st.SearchStrategy[torch.Tensor]:
    """Finite tensors of ``dtype`` (float16, bfloat16, float32 or float64) and ``shape``.

    ``shape`` is a shape or a strategy of shapes; by default 1 to 4 dimensions of 1 to 5
    elements each. Values lie in ``[min_value, max_value]``, shrunk to the values that
    ``dtype`` can represent (so float16 stays within +-65504). Besides arbitrary values,
    tensors come out constant (all-zero included), with many ties, or with every value
    within a small or large magnitude (1e-30, subnormal, 1e30, ...) when the bounds allow.

    ``elements``, a strategy of floats, replaces that mix (and the bounds). Its values
    must be representable in ``dtype`` (bfloat16: they are rounded to it) and finite:
    NaN and infinity are never drawn, so test those separately.
    """
    if dtype not in _NUMPY_DTYPES:
        raise InvalidArgument(
            f"dtype must be one of {sorted(map(str, _NUMPY_DTYPES))}, got {dtype!r}"
        )
    shapes = _shape_strategy(shape)
    if elements is not None:
        if not isinstance(elements, st.SearchStrategy):
            raise InvalidArgument(f"elements must be None or a strategy, got {elements!r}")
        arrays = hnp.arrays(_NUMPY_DTYPES[dtype][0], shapes, elements=elements)
        return arrays.map(lambda array: _to_tensor(array, dtype))

    lo = _check_number(min_value, "min_value")
    hi = _check_number(max_value, "max_value")
    if lo > hi:
        raise InvalidArgument(f"min_value={min_value!r} is greater than max_value={max_value!r}")
    bands = []
    for magnitude in _MAGNITUDES:
        span = (lo, hi) if magnitude is None else (max(lo, -magnitude), min(hi, magnitude))
        band = _representable_bounds(*span, dtype) if span[0] <= span[1] else None
        if band is not None and band not in bands:
            bands.append(band)
    if not bands:
        raise InvalidArgument(f"no {dtype} value lies in [{min_value!r}, {max_value!r}]")
    return _nasty_tensors(shapes, dtype, bands)


def _choices(values: object, name: str, allowed: Sequence[Any]) -> tuple:
    """``values`` as a non-empty tuple of members of ``allowed``, else ``InvalidArgument``."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise InvalidArgument(f"{name} must be a non-empty sequence, got {values!r}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InvalidArgument(f"{name}: {unknown[0]!r} is not one of {tuple(allowed)}")
    return tuple(dict.fromkeys(values))


def _check_group_sizes(group_sizes: object) -> tuple[int | None, ...]:
    if isinstance(group_sizes, str) or not isinstance(group_sizes, Sequence) or not group_sizes:
        raise InvalidArgument(f"group_sizes must be a non-empty sequence, got {group_sizes!r}")
    for size in group_sizes:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise InvalidArgument(f"group_sizes: {size!r} is neither None nor a positive int")
    return tuple(dict.fromkeys(group_sizes))


@st.composite
def _integer_specs(draw, bits, group_sizes, methods, activation):
    group_size = draw(st.sampled_from(group_sizes))
    return QuantSpec(
        bits=draw(bits),
        symmetric=draw(st.booleans()),
        per_channel=True if group_size is not None else draw(st.booleans()),
        parameters=draw(st.sampled_from(PARAMETER_TARGETS)),
        group_size=group_size,
        allow_short_rows=group_size is not None,
        scale_dtype=draw(st.sampled_from((None, *SCALE_DTYPES))),
        method=draw(st.sampled_from(methods)),
        **{name: draw(strategy) for name, strategy in activation.items()},
    )


@st.composite
def _float_specs(draw, formats):
    fmt = draw(st.sampled_from(formats))
    scaled = fmt.startswith("fp8")
    return QuantSpec(
        format=fmt,
        per_channel=draw(st.booleans()) if scaled else True,
        scale_dtype=draw(st.sampled_from((None, *SCALE_DTYPES))) if scaled else None,
        parameters=draw(st.sampled_from(PARAMETER_TARGETS)),
    )


def quant_specs(
    *,
    min_bits: int = MIN_BITS,
    max_bits: int = MAX_BITS,
    activations: bool = False,
    group_sizes: Sequence[int | None] = (None, 32, 128),
    methods: Sequence[str] = ("rtn", "mse"),
    formats: Sequence[str] = ("int",),
) -> st.SearchStrategy[QuantSpec]:
    """Valid ``QuantSpec`` values with ``min_bits <= bits <= max_bits`` (within 2..16).

    Integer specs draw their ``group_size`` from ``group_sizes`` (None: per channel or
    per tensor; a group-wise spec allows layers with fewer inputs, so it applies to any
    model), their rounding method from ``methods`` (``"gptq"`` needs calibration data, so
    it is left out unless asked for) and any ``scale_dtype``. ``formats`` adds float
    formats (``"fp16"``, ``"bf16"``, ``"fp8-e4m3"``, ``"fp8-e5m2"``), whose width is
    their own; the default draws integer specs only.

    With ``activations=True`` every integer spec also quantizes activations (its
    ``activation_bits`` in the same range, any observer); otherwise none does.
    """
    for name, value in (("min_bits", min_bits), ("max_bits", max_bits)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (MIN_BITS <= value <= MAX_BITS)
        ):
            raise InvalidArgument(
                f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}"
            )
    if min_bits > max_bits:
        raise InvalidArgument(f"min_bits={min_bits} is greater than max_bits={max_bits}")
    _check_flag(activations, "activations")
    sizes = _check_group_sizes(group_sizes)
    chosen_methods = _choices(methods, "methods", METHODS)
    chosen_formats = _choices(formats, "formats", FORMATS)
    if activations and "int" not in chosen_formats:
        raise InvalidArgument('activations=True quantizes activations of "int" specs only')
    bits = st.integers(min_bits, max_bits)
    activation = {}
    if activations:
        activation = {
            "activation_bits": bits,
            "observer": st.sampled_from(OBSERVERS),
            "percentile": st.floats(50, 100, exclude_min=True),
        }
    floats = tuple(f for f in chosen_formats if f in FLOAT_FORMATS)
    drawn = []
    if "int" in chosen_formats:
        drawn.append(_integer_specs(bits, sizes, chosen_methods, activation))
    if floats:
        drawn.append(_float_specs(floats))
    return st.one_of(drawn)


def _weight_prune_specs(structure: str, amounts, thresholds, extra) -> st.SearchStrategy:
    if PruneSpec(structure=structure, activation_threshold=0.0).n_m is not None:
        return st.builds(PruneSpec, structure=st.just(structure), **extra)
    # Global scope ranks single weights and needs amounts (see PruneSpec).
    scopes = SCOPES if structure == "unstructured" else ("layer",)
    shared = {"structure": st.just(structure), **extra}
    if structure == "channel":
        shared["norm"] = st.sampled_from(NORMS)
    by_amount = st.builds(PruneSpec, amount=amounts, scope=st.sampled_from(scopes), **shared)
    by_threshold = st.builds(PruneSpec, threshold=thresholds, **shared)
    return by_amount | by_threshold


def prune_specs(
    *,
    min_amount: float = 0.05,
    max_amount: float = 0.95,
    structures: Sequence[str] = ("unstructured", "channel", "2:4"),
    activations: bool = False,
) -> st.SearchStrategy[PruneSpec]:
    """Valid ``PruneSpec`` values with one of ``structures`` and weights chosen by amount
    (``min_amount <= amount <= max_amount``, within (0, 1)) or threshold alpha in [0, 1];
    an ``"N:M"`` structure fixes the amount itself.

    With ``activations=True`` every spec also prunes activations (a threshold beta in
    [0, 1]); otherwise none does.
    """
    low = _check_number(min_amount, "min_amount")
    high = _check_number(max_amount, "max_amount")
    if not 0 < low <= high < 1:
        raise InvalidArgument(
            "need 0 < min_amount <= max_amount < 1, "
            f"got min_amount={min_amount!r}, max_amount={max_amount!r}"
        )
    if isinstance(structures, str) or not isinstance(structures, Sequence) or not structures:
        raise InvalidArgument(f"structures must be a non-empty sequence, got {structures!r}")
    for structure in structures:
        try:
            PruneSpec(structure=structure, activation_threshold=0.0)
        except ValueError as error:
            raise InvalidArgument(f"structures: {error}") from None
    _check_flag(activations, "activations")
    amounts = st.floats(low, high)
    thresholds = st.floats(0, 1)
    extra = {"activation_threshold": st.floats(0, 1)} if activations else {}
    return st.one_of(
        [_weight_prune_specs(s, amounts, thresholds, extra) for s in dict.fromkeys(structures)]
    )
