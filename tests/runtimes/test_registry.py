"""Which recipes each runtime refuses, in words, and which extra to install: no torch needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_compress.engine.specs import PruneSpec, QuantSpec, as_quant_spec
from pytest_compress.errors import SpecError
from pytest_compress.runtimes import registry
from pytest_compress.runtimes.registry import RUNTIMES, check_runtime, missing_extra, unsupported

REAL = ("torchao", "onnxruntime")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_runs_everywhere(runtime):
    assert unsupported(runtime, QuantSpec(bits=8), None) is None
    assert unsupported(runtime, QuantSpec(bits=8), PruneSpec(amount=0.5)) is None


@pytest.mark.parametrize("runtime", REAL)
def test_w8a8_runs_on_both_real_runtimes(runtime):
    assert unsupported(runtime, QuantSpec(bits=8, activation_bits=8), None) is None


def test_int4_runs_on_torchao_only():
    assert unsupported("torchao", QuantSpec(bits=4), None) is None
    reason = unsupported("onnxruntime", QuantSpec(bits=4), None)
    assert reason == (
        "runtime='onnxruntime' cannot run 'int4'; it supports \"int8\" (dynamic quantization) "
        'and "w8a8" (static QDQ, calibrated)'
    )


@pytest.mark.parametrize("runtime", REAL)
@pytest.mark.parametrize("spec", [QuantSpec(bits=3), QuantSpec(bits=8, activation_bits=4)])
def test_other_formats_are_refused_naming_the_supported_ones(runtime, spec):
    reason = unsupported(runtime, spec, None)
    assert reason is not None
    fmt = "int3" if spec.bits == 3 else "w8a4"
    assert reason.startswith(f"runtime={runtime!r} cannot run {fmt!r}; it supports ")
    assert '"int8"' in reason and '"w8a8"' in reason


@pytest.mark.parametrize("runtime", REAL)
def test_activation_pruning_is_refused(runtime):
    reason = unsupported(runtime, QuantSpec(), PruneSpec(activation_threshold=0.1))
    assert reason is not None
    assert "PruneSpec.activation_threshold" in reason and "it supports" in reason


@pytest.mark.parametrize("runtime", REAL)
def test_all_parameters_are_refused(runtime):
    reason = unsupported(runtime, QuantSpec(parameters="all"), None)
    assert reason is not None and 'QuantSpec.parameters="all"' in reason


@pytest.mark.parametrize("runtime", REAL)
def test_a_prune_only_recipe_is_refused(runtime):
    reason = unsupported(runtime, None, PruneSpec(amount=0.5))
    assert reason is not None and "give quantize=" in reason


def test_refusals_particular_to_one_runtime():
    mse = QuantSpec(bits=8, activation_bits=8, observer="mse")
    assert "observer='mse'" in unsupported("onnxruntime", mse, None)
    percentile = QuantSpec(bits=8, activation_bits=8, observer="percentile")
    assert unsupported("onnxruntime", percentile, None) is None
    assert "observer='percentile'" in unsupported("torchao", percentile, None)
    selected = QuantSpec(exclude=("head",))
    assert "QuantSpec.include/exclude" in unsupported("onnxruntime", selected, None)
    assert unsupported("torchao", selected, None) is None
    assert "per output channel only" in unsupported(
        "torchao", QuantSpec(bits=4, per_channel=False), None
    )


def test_simulate_refuses_nothing_and_needs_nothing():
    assert unsupported("simulate", QuantSpec(bits=3, parameters="all"), None) is None
    assert missing_extra("simulate") is None


def test_an_unknown_runtime_is_a_spec_error_listing_them():
    with pytest.raises(SpecError, match=r"runtime must be one of \('simulate', 'torchao'"):
        check_runtime("tensorrt")
    with pytest.raises(SpecError):
        unsupported("tensorrt", QuantSpec(), None)


@pytest.mark.parametrize("runtime", REAL)
def test_the_installed_extras_are_found(runtime):
    assert missing_extra(runtime) is None  # CI installs both extras through [dev]


@pytest.mark.parametrize(
    ("runtime", "absent", "extra"),
    [
        ("onnxruntime", "onnxruntime", "onnx"),
        ("onnxruntime", "onnxscript", "onnx"),
        ("torchao", "torchao", "torchao"),
    ],
)
def test_a_missing_package_names_the_extra_to_install(monkeypatch, runtime, absent, extra):
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(
        registry.importlib.util, "find_spec", lambda name: None if name == absent else real(name)
    )
    assert missing_extra(runtime) == (
        f'runtime {runtime!r} needs `pip install "pytest-compress[{extra}]"` '
        f"({absent} is not installed)"
    )


def test_the_registry_and_the_package_import_neither_torch_nor_the_runtimes():
    code = (
        "import sys, pytest_compress, pytest_compress.runtimes.registry;"
        "from pytest_compress.runtimes import unsupported, missing_extra;"
        "missing_extra('onnxruntime'); missing_extra('torchao');"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'torchao')"
        " if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]"
    assert run.stderr == ""


@pytest.mark.parametrize("runtime", ["torchao", "onnxruntime"])
@pytest.mark.parametrize("quantize", ["int8-g128", "int8-gptq", "int8-mse", "fp16", "fp8"])
def test_real_runtimes_refuse_the_simulated_only_formats(runtime, quantize):
    reason = unsupported(runtime, as_quant_spec(quantize), None)
    assert reason is not None and "round-to-nearest integer" in reason
