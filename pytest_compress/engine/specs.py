"""Compression recipes as small frozen dataclasses, and the string shorthands for them.

``QuantSpec`` says how to quantize, ``PruneSpec`` how to prune; ``as_quant_spec`` and
``as_prune_spec`` turn the shorthands (``"int8"``, ``"w8a8"``, ``0.8``) into specs.
Every invalid value raises ``SpecError`` (a ``ValueError``) naming the argument and the
allowed values. No torch here: the plugin parses recipes before any check imports it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import SpecError

# The bit widths the integer mapping supports (one bit would leave no zero point).
MIN_BITS = 2
MAX_BITS = 16
OBSERVERS = ("minmax", "percentile", "mse", "dynamic")
# Weight formats: integer codes with scales, or a float dtype (fp8 with a scale per channel).
FORMATS = ("int", "fp16", "bf16", "fp8-e4m3", "fp8-e5m2")
FLOAT_FORMATS = FORMATS[1:]
# The bits a float format stores per weight, and the aliases QuantSpec.format accepts.
FORMAT_BITS = {"fp16": 16, "bf16": 16, "fp8-e4m3": 8, "fp8-e5m2": 8}
_FORMAT_ALIASES = {"fp8": "fp8-e4m3", "float16": "fp16", "bfloat16": "bf16"}
# Rounding methods: to nearest, nearest within an MSE-searched clipping range, GPTQ.
METHODS = ("rtn", "mse", "gptq")
SCALE_DTYPES = ("float32", "float16", "bfloat16")
PARAMETER_TARGETS = ("weights", "all")
SCOPES = ("layer", "global")
NORMS = ("l1", "l2")
QUANT_SHORTHANDS = (
    f'"int{MIN_BITS}".."int{MAX_BITS}" (weights), '
    f'"w<bits>a<bits>" such as "w8a8" or "w4a8" (weights and activations, static), '
    f'"w<bits>a<bits>-dynamic" such as "w8a8-dynamic" (activations per token at run time), '
    f'"int<bits>-g<G>" such as "int4-g128" (one scale per G weights), a suffix "-mse" or '
    f'"-gptq" on an int shorthand (the rounding method, e.g. "int4-g128-gptq"), '
    f'"fp16", "bf16", "fp8" (e4m3) or "fp8-e5m2"'
)
# Named selections, usable wherever a module-name pattern is (include, exclude, keep_float):
# each resolves against the model (engine.layers.expand_presets).
PRESETS = {
    "@embeddings": "every nn.Embedding and nn.EmbeddingBag",
    "@head": (
        "the output head: a Hugging Face model's get_output_embeddings(), otherwise the "
        "last compressible layer the model registers"
    ),
}
# The transformer default: quantize the blocks, keep the token tables and the head float.
TRANSFORMER_EXCLUDE = ("@embeddings", "@head")
_INT_PATTERN = re.compile(r"int(\d+)(?:-g(\d+))?(?:-(rtn|mse|gptq))?")
_WA_PATTERN = re.compile(r"w(\d+)a(\d+)(-dynamic)?")
_NM_PATTERN = re.compile(r"(\d+):(\d+)")


def check_bits(bits: object, *, name: str = "bits") -> int:
    """Return ``bits`` if it is an int in [2, 16]; otherwise raise ``SpecError``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise SpecError(f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def _patterns(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        check_presets(value, name)
        return tuple(value)
    raise SpecError(
        f"{name} must be a module-name pattern or a sequence of them "
        f'(fnmatch style, e.g. "features.*"), got {value!r}'
    )


def check_presets(patterns: tuple[str, ...] | list[str], name: str) -> None:
    """``SpecError`` for a pattern that starts with ``@`` but names no preset."""
    unknown = [p for p in patterns if p.startswith("@") and p not in PRESETS]
    if unknown:
        known = "; ".join(f"{preset} ({what})" for preset, what in PRESETS.items())
        raise SpecError(f"{name}: unknown preset {unknown[0]!r}; the presets are {known}")


def _fraction(value: object, name: str, *, low_open: bool, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SpecError(f"{name} must be a number, got {value!r}")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise SpecError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a model.

    - ``format``: ``"int"`` (integer codes with scales and zero points, the default), or a
      float format: ``"fp16"``, ``"bf16"`` (weights cast, round to nearest even, no scale),
      ``"fp8-e4m3"`` (alias ``"fp8"``) or ``"fp8-e5m2"`` (a scale per output channel,
      ``amax / 448`` or ``amax / 57344``, as torchao's float8 weight-only config).
    - ``bits``: weight bits, 2 to 16 (integer format; default 8). A float format fixes
      its own width (16 or 8), which ``bits`` then holds.
    - ``symmetric``: zero point fixed at 0 (signed codes) instead of the affine min/max
      mapping (default False). Float formats are symmetric by nature (``True``).
    - ``per_channel``: one scale per output channel of each weight (biases and other
      1-D parameters are always per tensor).
    - ``group_size``: one scale and zero point per group of ``group_size`` consecutive
      weights along the input dimension of each output channel (a conv weight's input
      dimension is ``in_channels / groups * kh * kw``, flattened); the last group of a row
      may be shorter. A layer whose input dimension is shorter than ``group_size`` is an
      error naming it, unless ``allow_short_rows=True`` (such rows are then one group:
      per channel).
    - ``scale_dtype``: how scales are stored, ``"float32"``, ``"float16"`` or
      ``"bfloat16"``. Default: float16 for group-wise scales (as int4-g128 checkpoints
      ship them), float32 otherwise (float64 for float64 weights). A narrow scale is
      rounded up (so the range still fits) and the simulation uses it exactly.
    - ``method``: ``"rtn"`` (round to nearest), ``"mse"`` (per channel or group, the
      clipping range among shrink factors 1.0, 0.98, ..., 0.5 of min/max with the least
      squared weight error; no data) or ``"gptq"`` (GPTQ on the calibration data: rounds
      column by column, compensating each error on the columns not yet rounded).
    - ``parameters``: ``"weights"`` (the weights of Linear, Conv*, ConvTranspose* and
      Embedding layers) or ``"all"`` (every floating-point parameter, biases and
      normalisation layers included: whole-model parameter quantization).
    - ``activation_bits``: also fake-quantize the outputs of the selected layers at run
      time, per tensor, with ranges calibrated on data by ``observer``.
    - ``observer``: ``"minmax"``, ``"percentile"`` (``percentile`` of the values, e.g.
      99.99) or ``"mse"`` (the clipping range with the least squared error): static
      per-tensor ranges of each selected layer's *output*, calibrated on data (padded
      tokens skipped when a batch carries an ``attention_mask``). ``"dynamic"``: no
      calibration; each selected layer's *input* is rounded at run time per token (one
      symmetric scale per row of features, as int8 GEMM runtimes such as torchao's
      dynamic-activation configs do).
    - ``activation_format``: also round the selected layers' outputs to a float format at
      run time (``"fp16"``, ``"bf16"``, ``"fp8"``; fp8 with one scale per tensor, its
      largest magnitude over the format's, computed on each output): no calibration.
    - ``include`` / ``exclude``: fnmatch patterns on module names.
    """

    bits: int = None  # type: ignore[assignment]  # None -> 8, or the float format's width
    symmetric: bool = None  # type: ignore[assignment]  # None -> False (True for floats)
    per_channel: bool = True
    parameters: str = "weights"
    activation_bits: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())
    group_size: int | None = None
    allow_short_rows: bool = False
    scale_dtype: str | None = None
    format: str = "int"
    method: str = "rtn"
    activation_format: str | None = None

    def __post_init__(self) -> None:
        fmt = _FORMAT_ALIASES.get(self.format, self.format)
        if fmt not in FORMATS:
            raise SpecError(
                f"QuantSpec.format must be one of {FORMATS} (or 'fp8' for 'fp8-e4m3'), "
                f"got {self.format!r}"
            )
        object.__setattr__(self, "format", fmt)
        if fmt == "int":
            self._check_integer()
        else:
            self._check_float()
        if self.activation_bits is not None:
            check_bits(self.activation_bits, name="QuantSpec.activation_bits")
        self._check_activation_format()
        for flag in ("per_channel", "allow_short_rows"):
            if not isinstance(getattr(self, flag), bool):
                raise SpecError(f"QuantSpec.{flag} must be True or False")
        if self.parameters not in PARAMETER_TARGETS:
            raise SpecError(
                f"QuantSpec.parameters must be one of {PARAMETER_TARGETS}, got {self.parameters!r}"
            )
        if self.observer not in OBSERVERS:
            raise SpecError(f"QuantSpec.observer must be one of {OBSERVERS}, got {self.observer!r}")
        if not isinstance(self.percentile, (int, float)) or not 50 < self.percentile <= 100:
            raise SpecError(f"QuantSpec.percentile must be in (50, 100], got {self.percentile!r}")
        object.__setattr__(self, "include", _patterns(self.include, "QuantSpec.include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "QuantSpec.exclude"))

    def _check_activation_format(self) -> None:
        if self.activation_format is None:
            return
        fmt = _FORMAT_ALIASES.get(self.activation_format, self.activation_format)
        if fmt not in FLOAT_FORMATS:
            raise SpecError(
                f"QuantSpec.activation_format must be None or one of {FLOAT_FORMATS} (or "
                f"'fp8'), got {self.activation_format!r}"
            )
        if self.activation_bits is not None:
            raise SpecError(
                "QuantSpec takes activation_bits (integer activations) or activation_format "
                "(float activations), not both"
            )
        object.__setattr__(self, "activation_format", fmt)

    def _check_integer(self) -> None:
        object.__setattr__(self, "bits", 8 if self.bits is None else self.bits)
        check_bits(self.bits, name="QuantSpec.bits")
        object.__setattr__(
            self, "symmetric", bool(self.symmetric) if self.symmetric is None else self.symmetric
        )
        if not isinstance(self.symmetric, bool):
            raise SpecError(f"QuantSpec.symmetric must be True or False, got {self.symmetric!r}")
        if self.method not in METHODS:
            raise SpecError(f"QuantSpec.method must be one of {METHODS}, got {self.method!r}")
        if self.scale_dtype is not None and self.scale_dtype not in SCALE_DTYPES:
            raise SpecError(
                f"QuantSpec.scale_dtype must be None (automatic) or one of {SCALE_DTYPES}, "
                f"got {self.scale_dtype!r}"
            )
        if self.group_size is None:
            return
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
            raise SpecError(
                f"QuantSpec.group_size must be None (per channel) or a positive int such as "
                f"128, got {self.group_size!r}"
            )
        if self.group_size <= 0:
            raise SpecError(f"QuantSpec.group_size must be a positive int, got {self.group_size}")
        if not self.per_channel:
            raise SpecError(
                "QuantSpec.group_size gives each output channel one scale per group; "
                "per_channel=False (one scale per tensor) contradicts it"
            )

    def _check_float(self) -> None:
        fmt, width = self.format, FORMAT_BITS[self.format]
        wrong = {
            "bits": self.bits not in (None, width),
            "symmetric": self.symmetric not in (None, True),
            "group_size": self.group_size is not None,
            "method": self.method != "rtn",
            "activation_bits": self.activation_bits is not None,
        }
        if not fmt.startswith("fp8"):
            wrong["per_channel"] = self.per_channel is not True
            wrong["scale_dtype"] = self.scale_dtype is not None
        elif self.scale_dtype is not None and self.scale_dtype not in SCALE_DTYPES:
            wrong["scale_dtype"] = True
        bad = [name for name, is_wrong in wrong.items() if is_wrong]
        if bad:
            allowed = (
                "per_channel (True: a scale per output channel, False: one per tensor), "
                f"scale_dtype (one of {SCALE_DTYPES}), parameters, include and exclude"
                if fmt.startswith("fp8")
                else "parameters, include and exclude (the cast has no scale)"
            )
            raise SpecError(
                f"QuantSpec(format={fmt!r}) takes no {bad[0]}={getattr(self, bad[0])!r}: "
                f"a float format fixes bits ({width}), is symmetric and rounds to nearest; "
                f"it accepts {allowed}"
            )
        object.__setattr__(self, "bits", width)
        object.__setattr__(self, "symmetric", True)

    @property
    def is_float(self) -> bool:
        """A float format (fp16, bf16, fp8) rather than integer codes."""
        return self.format != "int"

    @property
    def quantizes_activations(self) -> bool:
        return self.activation_bits is not None

    @property
    def needs_calibration(self) -> bool:
        """Static activation ranges and GPTQ use calibration data; dynamic ranges do not."""
        static = self.activation_bits is not None and self.observer != "dynamic"
        return static or self.method == "gptq"

    def describe(self) -> str:
        """The recipe in words, e.g. ``int4 per-channel``, ``int4 g128, gptq`` or ``bf16``."""
        words = self._weight_words()
        if self.activation_format is not None:
            words += f", activations {self.activation_format.replace('-', ' ')}"
        return words

    def _weight_words(self) -> str:
        if self.is_float:
            words = self.format.replace("-", " ")
            if self.format.startswith("fp8"):
                words += " per-channel" if self.per_channel else " per-tensor"
            if self.scale_dtype is not None:
                words += f" ({self.scale_dtype} scales)"
            return words + (", all parameters" if self.parameters == "all" else "")
        if self.activation_bits is not None:
            how = "dynamic per-token" if self.observer == "dynamic" else self.observer
            words = f"w{self.bits}a{self.activation_bits} ({how})"
        else:
            words = f"int{self.bits}"
        words += " symmetric" if self.symmetric else ""
        if self.group_size is not None:
            words += f" g{self.group_size}"
            if self.scale_dtype not in (None, "float16"):
                words += f" ({self.scale_dtype} scales)"
        else:
            words += " per-channel" if self.per_channel else " per-tensor"
            if self.scale_dtype not in (None, "float32"):
                words += f" ({self.scale_dtype} scales)"
        if self.method != "rtn":
            words += f", {self.method}"
        if self.parameters == "all":
            words += ", all parameters"
        return words


@dataclass(frozen=True)
class PruneSpec:
    """How to prune a model.

    Exactly one way to choose weights, unless ``activation_threshold`` alone is given:

    - ``threshold=alpha``: per layer, zero every weight with ``|w| < alpha * max|w|``
      (magnitude threshold pruning; with ``structure="channel"`` it applies to channel norms).
    - ``amount``: the fraction of weights (or channels) removed by magnitude, per layer
      (``scope="layer"``) or across all selected layers (``scope="global"``).
    - ``structure="N:M"`` (e.g. ``"2:4"``): keep the N largest of every group of M
      consecutive weights along the input dimension.

    ``structure="channel"`` removes whole output channels ranked by their ``norm``
    (``"l1"`` or ``"l2"``). ``activation_threshold=beta`` zeroes, at run time, every
    output activation of the selected layers with ``|a| < beta * max|a|`` (max over
    that forward's output tensor).
    """

    amount: float | None = None
    threshold: float | None = None
    scope: str = "layer"
    structure: str = "unstructured"
    norm: str = "l1"
    activation_threshold: float | None = None
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.amount is not None:
            object.__setattr__(
                self,
                "amount",
                _fraction(self.amount, "PruneSpec.amount", low_open=True, high_open=True),
            )
        if self.threshold is not None:
            object.__setattr__(
                self,
                "threshold",
                _fraction(
                    self.threshold, "PruneSpec.threshold (alpha)", low_open=False, high_open=False
                ),
            )
        if self.activation_threshold is not None:
            object.__setattr__(
                self,
                "activation_threshold",
                _fraction(
                    self.activation_threshold,
                    "PruneSpec.activation_threshold (beta)",
                    low_open=False,
                    high_open=False,
                ),
            )
        if self.scope not in SCOPES:
            raise SpecError(f"PruneSpec.scope must be one of {SCOPES}, got {self.scope!r}")
        if self.norm not in NORMS:
            raise SpecError(f"PruneSpec.norm must be one of {NORMS}, got {self.norm!r}")
        structures = '"unstructured", "channel" or "N:M" such as "2:4"'
        if not isinstance(self.structure, str):
            raise SpecError(f"PruneSpec.structure must be {structures}, got {self.structure!r}")
        if self.n_m is None and self.structure not in ("unstructured", "channel"):
            raise SpecError(f"PruneSpec.structure must be {structures}, got {self.structure!r}")
        object.__setattr__(self, "include", _patterns(self.include, "PruneSpec.include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "PruneSpec.exclude"))
        self._check_selection()

    def _check_selection(self) -> None:
        ways = [w for w in ("amount", "threshold") if getattr(self, w) is not None]
        if self.n_m is not None:
            if ways:
                raise SpecError(
                    f"PruneSpec.structure={self.structure!r} fixes how many weights are kept; "
                    f"do not also give {ways[0]}"
                )
            return
        if len(ways) > 1:
            raise SpecError("PruneSpec takes amount or threshold, not both")
        if not ways and self.activation_threshold is None:
            raise SpecError(
                "PruneSpec needs amount (fraction removed, 0 < amount < 1), threshold "
                '(alpha, 0 <= alpha <= 1), structure="N:M" or activation_threshold (beta)'
            )
        if self.scope == "global" and self.structure == "channel":
            raise SpecError(
                'PruneSpec.scope="global" ranks single weights across layers; with '
                'structure="channel" use scope="layer"'
            )
        if self.scope == "global" and self.threshold is not None:
            raise SpecError(
                'PruneSpec.threshold (alpha) is relative to each layer\'s max|w|: use scope="layer"'
            )

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for an N:M structure, else None."""
        match = _NM_PATTERN.fullmatch(self.structure) if isinstance(self.structure, str) else None
        if match is None:
            return None
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise SpecError(f"PruneSpec.structure {self.structure!r} needs 0 < N < M")
        return n, m

    @property
    def prunes_weights(self) -> bool:
        return self.amount is not None or self.threshold is not None or self.n_m is not None

    def describe(self) -> str:
        """The recipe in words, e.g. ``prune 80% (global, magnitude)``."""
        parts = []
        if self.n_m is not None:
            parts.append(f"prune {self.structure} (N:M)")
        elif self.amount is not None:
            kind = "channel " + self.norm if self.structure == "channel" else "magnitude"
            parts.append(f"prune {self.amount:.0%} ({self.scope}, {kind})")
        elif self.threshold is not None:
            kind = "channel " + self.norm if self.structure == "channel" else "magnitude"
            parts.append(f"prune |w| < {self.threshold:g} max|w| (layer, {kind})")
        if self.activation_threshold is not None:
            parts.append(f"activation prune |a| < {self.activation_threshold:g} max|a|")
        return " + ".join(parts)


def as_quant_spec(value: QuantSpec | str | None) -> QuantSpec | None:
    """A ``QuantSpec`` from a spec, a shorthand string, or None (no quantization)."""
    if value is None or isinstance(value, QuantSpec):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if match := _INT_PATTERN.fullmatch(text):
            bits = int(match[1])
            group = int(match[2]) if match[2] else None
            if MIN_BITS <= bits <= MAX_BITS and (group is None or group > 0):
                return QuantSpec(bits=bits, group_size=group, method=match[3] or "rtn")
        elif match := _WA_PATTERN.fullmatch(text):
            weight_bits, activation_bits = int(match[1]), int(match[2])
            observer = "dynamic" if match[3] else "minmax"
            if all(MIN_BITS <= b <= MAX_BITS for b in (weight_bits, activation_bits)):
                return QuantSpec(
                    bits=weight_bits, activation_bits=activation_bits, observer=observer
                )
        elif text in (*FLOAT_FORMATS, *_FORMAT_ALIASES):
            return QuantSpec(format=text)
    raise SpecError(f"quantize must be a QuantSpec or one of {QUANT_SHORTHANDS}; got {value!r}")


def as_prune_spec(value: PruneSpec | float | str | None) -> PruneSpec | None:
    """A ``PruneSpec`` from a spec, a bare fraction (amount), ``"N:M"``, or None."""
    if value is None or isinstance(value, PruneSpec):
        return value
    if isinstance(value, float) and 0 < value < 1:
        return PruneSpec(amount=value)
    if isinstance(value, str) and _NM_PATTERN.fullmatch(value.strip()):
        return PruneSpec(structure=value.strip())
    raise SpecError(
        'prune must be a PruneSpec, a fraction 0 < amount < 1 (e.g. 0.8) or "N:M" '
        f'(e.g. "2:4"); got {value!r}'
    )


def describe_recipe(quantize: QuantSpec | None, prune: PruneSpec | None) -> str:
    """The recipe in words, e.g. ``int4 per-channel + prune 80% (global, magnitude)``."""
    parts = [spec.describe() for spec in (quantize, prune) if spec is not None]
    return " + ".join(parts) if parts else "no compression"
