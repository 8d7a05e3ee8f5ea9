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
PARAMETER_TARGETS = ("weights", "all")
SCOPES = ("layer", "global")
NORMS = ("l1", "l2")
QUANT_SHORTHANDS = (
    f'"int{MIN_BITS}".."int{MAX_BITS}" (weights), '
    f'"w<bits>a<bits>" such as "w8a8" or "w4a8" (weights and activations, static), '
    f'"w<bits>a<bits>-dynamic" such as "w8a8-dynamic" (activations per token at run time)'
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
_INT_PATTERN = re.compile(r"int(\d+)")
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

    - ``bits``: weight bits, 2 to 16.
    - ``symmetric``: zero point fixed at 0 (signed codes) instead of the affine min/max mapping.
    - ``per_channel``: one scale per output channel of each weight (biases and other
      1-D parameters are always per tensor).
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
    - ``include`` / ``exclude``: fnmatch patterns on module names.
    """

    bits: int = 8
    symmetric: bool = False
    per_channel: bool = True
    parameters: str = "weights"
    activation_bits: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        check_bits(self.bits, name="QuantSpec.bits")
        if self.activation_bits is not None:
            check_bits(self.activation_bits, name="QuantSpec.activation_bits")
        for flag in ("symmetric", "per_channel"):
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

    @property
    def quantizes_activations(self) -> bool:
        return self.activation_bits is not None

    @property
    def needs_calibration(self) -> bool:
        """Static activation ranges are observed on calibration data; dynamic ones are not."""
        return self.activation_bits is not None and self.observer != "dynamic"

    def describe(self) -> str:
        """The recipe in words, e.g. ``int4 per-channel`` or ``w8a8 (minmax)``."""
        if self.activation_bits is not None:
            how = "dynamic per-token" if self.observer == "dynamic" else self.observer
            words = f"w{self.bits}a{self.activation_bits} ({how})"
        else:
            words = f"int{self.bits}"
        words += " symmetric" if self.symmetric else ""
        words += " per-channel" if self.per_channel else " per-tensor"
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
            if MIN_BITS <= bits <= MAX_BITS:
                return QuantSpec(bits=bits)
        elif match := _WA_PATTERN.fullmatch(text):
            weight_bits, activation_bits = int(match[1]), int(match[2])
            observer = "dynamic" if match[3] else "minmax"
            if all(MIN_BITS <= b <= MAX_BITS for b in (weight_bits, activation_bits)):
                return QuantSpec(
                    bits=weight_bits, activation_bits=activation_bits, observer=observer
                )
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
