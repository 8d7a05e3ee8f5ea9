"""Which runtimes exist, which recipes each can run, and which pip extra provides it.

Torch-free and import-free: the plugin checks a marker's ``runtime=`` at collection,
before any check imports torch, and ``missing_extra`` asks ``importlib.util.find_spec``
rather than importing onnxruntime or torchao (slow, and they may warn on import).
"""

from __future__ import annotations

import importlib.util

from ..engine.specs import PruneSpec, QuantSpec
from ..errors import SpecError

RUNTIMES = ("simulate", "torchao", "onnxruntime")
# The pip extra that provides each real runtime, and the top-level modules it must bring.
EXTRAS = {"torchao": "torchao", "onnxruntime": "onnx"}
REQUIRED_MODULES = {"torchao": ("torchao",), "onnxruntime": ("onnx", "onnxruntime", "onnxscript")}
# What each real runtime runs, in words, for the refusal sentences.
SUPPORTED = {
    "torchao": (
        '"int8" (weight-only), "w8a8" (dynamic int8 activations) and "int4" (weight-only), '
        "on Linear layers"
    ),
    "onnxruntime": '"int8" (dynamic quantization) and "w8a8" (static QDQ, calibrated)',
}
# (weight bits, activation bits) each runtime can deploy.
_FORMATS = {
    "torchao": {(8, None), (8, 8), (4, None)},
    "onnxruntime": {(8, None), (8, 8)},
}
# The activation observers each runtime can honour. torchao calibrates nothing: it rounds
# activations per token at run time ("w8a8-dynamic" says so; plain "w8a8" is accepted and
# its simulation's static ranges show up as the fidelity gap). ONNX Runtime calibrates
# static QDQ ranges, or rounds dynamically per tensor (quantize_dynamic) for "dynamic".
_OBSERVERS = {
    "torchao": ("minmax", "dynamic"),
    "onnxruntime": ("minmax", "percentile", "dynamic"),
}


def check_runtime(runtime: object) -> str:
    """``runtime`` if it names a runtime; otherwise ``SpecError`` listing them."""
    if runtime not in RUNTIMES:
        raise SpecError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    assert isinstance(runtime, str)
    return runtime


def unsupported(runtime: str, quant: QuantSpec | None, prune: PruneSpec | None) -> str | None:
    """Why ``runtime`` cannot run this recipe, in one sentence naming what it supports; or None.

    Pruning runs in torch before the runtime quantizes (the zeros are kept, stored dense),
    so only activation pruning, which needs a run-time hook, is refused.
    """
    if check_runtime(runtime) == "simulate":
        return None
    supports = f"it supports {SUPPORTED[runtime]}"
    if prune is not None and prune.activation_threshold is not None:
        return (
            f"runtime={runtime!r} cannot prune activations at run time "
            f"(PruneSpec.activation_threshold), only weights before quantizing; {supports}"
        )
    if quant is None:
        return f"runtime={runtime!r} deploys a quantized model: give quantize=...; {supports}"
    if quant.is_float or quant.group_size is not None or quant.method != "rtn":
        # the backends build their own round-to-nearest integer mapping
        return (
            f"runtime={runtime!r} deploys round-to-nearest integer weights with per-channel "
            f"or per-tensor scales, not {quant.describe()!r}; {supports}"
        )
    if (quant.bits, quant.activation_bits) not in _FORMATS[runtime]:
        return f"runtime={runtime!r} cannot run {_format(quant)!r}; {supports}"
    if quant.activation_format is not None:
        return (
            f"runtime={runtime!r} does not round activations to a float format "
            f"(QuantSpec.activation_format); {supports}"
        )
    if quant.parameters == "all":
        return (
            f"runtime={runtime!r} quantizes layer weights only, not every parameter "
            f'(QuantSpec.parameters="all"); {supports}'
        )
    if quant.quantizes_activations and quant.observer not in _OBSERVERS[runtime]:
        return (
            f"runtime={runtime!r} cannot calibrate activations with observer={quant.observer!r} "
            f"(it supports {', '.join(map(repr, _OBSERVERS[runtime]))}); {supports}"
        )
    if runtime == "torchao" and quant.bits == 4 and not quant.per_channel:
        return (
            "runtime='torchao' quantizes int4 weights per output channel only "
            f"(QuantSpec.per_channel=False asks for one scale per tensor); {supports}"
        )
    if runtime == "onnxruntime" and (quant.include or quant.exclude):
        return (
            "runtime='onnxruntime' quantizes every MatMul, Gemm and Conv of the exported graph "
            "and cannot select layers by module name (QuantSpec.include/exclude); "
            f"{supports}"
        )
    return None


def missing_extra(runtime: str) -> str | None:
    """What to install when ``runtime`` cannot be imported here; None when it can.

    Asks ``find_spec`` and imports nothing.
    """
    if check_runtime(runtime) == "simulate":
        return None
    missing = [name for name in REQUIRED_MODULES[runtime] if _find_spec(name) is None]
    if not missing:
        return None
    return (
        f'runtime {runtime!r} needs `pip install "pytest-compress[{EXTRAS[runtime]}]"` '
        f"({', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed)"
    )


def _find_spec(name: str) -> object:
    # A module imported under this name, but broken (its spec unset), counts as missing.
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _format(quant: QuantSpec) -> str:
    if quant.activation_bits is None:
        return f"int{quant.bits}"
    return f"w{quant.bits}a{quant.activation_bits}"
