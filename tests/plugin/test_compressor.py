"""compressor=: the user's own compression pipeline measured like a built-in recipe.

Its numbers are checked against an independent computation: the same pipeline run by hand
on a fresh model, evaluated with a plain loop.
"""

from __future__ import annotations

import io
import textwrap

import pytest
import torch

from tests.plugin_projects import PLAIN_CONFTEST, read_json

CONFTEST = (
    PLAIN_CONFTEST
    + """
from pytest_compress import Compressed


def half_precision(model, calibration_data):
    # the team's pipeline: fp16 weights, run in float32
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    return model


def vandal(model, calibration_data):
    # a pipeline that prunes its input in place and hands it back
    with torch.no_grad():
        model[0].weight[:, ::2] = 0.0
    return model


@pytest.fixture
def fp16_pipeline():
    return half_precision


@pytest.fixture
def vandal_pipeline():
    return vandal


def make_onnx_pipeline(folder):
    def build(model, calibration_data):
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic

        example = calibration_data[0][0]
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim.AUTO},))
        program.save(str(folder / "float.onnx"))
        quantize_dynamic(str(folder / "float.onnx"), str(folder / "int8.onnx"),
                         weight_type=QuantType.QInt8)
        session = onnxruntime.InferenceSession(str(folder / "int8.onnx"),
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def predict(x):
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        return Compressed(predict=predict, path=folder / "int8.onnx")

    return build


@pytest.fixture
def onnx_pipeline(tmp_path):
    return make_onnx_pipeline(tmp_path)


@pytest.fixture
def broken_pipeline(tmp_path):
    return lambda model, data: Compressed(predict=model, path=tmp_path / "missing.onnx")
"""
)


def project(pytester: pytest.Pytester, tests: str) -> None:
    pytester.makeconftest(textwrap.dedent(CONFTEST))
    pytester.makepyfile(test_project=textwrap.dedent(tests))


def checks(pytester: pytest.Pytester) -> dict[str, dict]:
    report = read_json(pytester.path / "report.json")
    return {entry["check"].split("::")[1]: entry for entry in report["checks"]}


def fresh() -> tuple[torch.nn.Module, list]:
    namespace: dict = {}
    exec(CONFTEST, namespace)
    model = namespace["make_model"]()
    return model, namespace["make_data"](model)


def top1(predict, data) -> float:
    with torch.no_grad():
        return sum(int((predict(x).argmax(1) == y).sum()) for x, y in data) / 256


def test_a_compressor_returning_a_module_is_measured_like_a_recipe(pytester) -> None:
    project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(compressor="fp16_pipeline", max_accuracy_drop=0.01,
                              max_size_ratio=0.6)
        def test_fp16(): pass

        @pytest.mark.compress(compressor="fp16_pipeline", quantize="int8",
                              max_fidelity_gap=0.02)
        def test_fp16_against_int8(): pass
        """,
    )
    result = pytester.runpytest("--compress-report=report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)  # fp16 kept in a float32 state_dict: no smaller
    entries = checks(pytester)
    fp16 = entries["test_fp16"]
    model, data = fresh()
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert fp16["runtime"] == "compressor fp16_pipeline" == fp16["recipe"]
    assert fp16["compressed_metric"] == top1(model, data)
    assert fp16["compressed_size"] == len(buffer.getvalue())
    assert [v["budget"] for v in fp16["violations"]] == ["max_size_ratio"]
    assert fp16["simulated_metric"] is None and fp16["fidelity_gap"] is None
    against = entries["test_fp16_against_int8"]
    assert against["recipe"] == "compressor fp16_pipeline (as int8 per-channel)"
    assert against["fidelity_gap"] == pytest.approx(
        abs(against["compressed_metric"] - against["simulated_metric"])
    )


def test_a_compressor_that_mutates_its_input_never_touches_the_users_model(pytester) -> None:
    project(
        pytester,
        """
        import pytest
        import torch

        @pytest.mark.compress(compressor="vandal_pipeline", max_accuracy_drop=0.99,
                              min_sparsity=0.4)
        def test_vandal(compress_model, compress_data):
            pass

        def test_untouched(compress_model):
            fresh = make_model()
            assert all(torch.equal(a, b) for a, b in
                       zip(compress_model.state_dict().values(), fresh.state_dict().values()))

        from conftest import make_model
        """,
    )
    result = pytester.runpytest("--compress-report=report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    vandal = checks(pytester)["test_vandal"]
    assert vandal["float_metric"] == 1.0  # measured on the untouched float model
    half_zeroed = 32 * 16 / (16 * 64 + 64 * 4)
    assert vandal["sparsity"] == pytest.approx(half_zeroed)


def test_a_compressor_returning_an_onnx_artifact(tmp_path) -> None:
    from tests.plugin_projects import run_subprocess

    # In a process of its own: an in-process pytester run forgets the modules it imported,
    # and torch's exporter cannot register its operators twice in one process.
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "project" / "test_project.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.compress(compressor="onnx_pipeline", max_accuracy_drop=0.05,
                                  max_size_ratio=0.8, calibration_data="compress_data")
            def test_onnx(): pass
            """
        )
    )
    result = run_subprocess(tmp_path / "project", "--compress-report=report.json")
    assert result.ret == 0, result.stdout.str()
    entry = read_json(tmp_path / "project" / "report.json")["checks"][0]
    assert entry["saved_as"].startswith("int8.onnx from compressor onnx_pipeline")
    assert entry["sparsity"] is None and entry["non_finite"]["sparsity"] == "NaN"
    model, data = fresh()  # the same pipeline by hand
    namespace: dict = {}
    exec(CONFTEST, namespace)
    made = namespace["make_onnx_pipeline"](tmp_path)(model, data)
    assert entry["compressed_metric"] == top1(made.predict, data)
    assert entry["compressed_size"] == made.files[0].stat().st_size


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('compressor="fp16_pipeline", runtime="torchao", max_accuracy_drop=0.1',
         "*compressor: deploys the model itself; drop runtime='torchao'*"),
        ('compressor="fp16_pipeline", max_fidelity_gap=0.1',
         "*max_fidelity_gap: compares the compressor's model with the simulation of a recipe*"),
        ('compressor="no_such_pipeline", max_accuracy_drop=0.1',
         "*compressor: no fixture named 'no_such_pipeline' is visible to this test*"),
        ('compressor="fp16_pipeline", search="sparsity", max_accuracy_drop=0.1',
         "*compressor: deploys what it returns; search= and keep_float= adjust a recipe*"),
    ],
)  # fmt: skip
def test_compressor_usage_errors_at_collection(pytester, marker, expected) -> None:
    project(
        pytester,
        f"""
        import pytest

        @pytest.mark.compress({marker})
        def test_check(): pass
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])


def test_a_compressor_artifact_that_does_not_exist_is_one_clear_line(pytester) -> None:
    project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(compressor="broken_pipeline", max_accuracy_drop=0.1)
        def test_check(): pass
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*could not run the check*returned Compressed(path=...) naming files that do not*"]
    )


def test_a_compressor_is_cached_until_its_code_changes(pytester) -> None:
    tests = """
        import pytest

        @pytest.mark.compress(compressor="fp16_pipeline", max_accuracy_drop=0.01)
        def test_fp16(): pass
        """
    project(pytester, tests)
    for expected in (False, True):
        pytester.runpytest("--compress-report=report.json").assert_outcomes(passed=1)
        assert checks(pytester)["test_fp16"]["cached"] is expected
    conftest = pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text().replace(".half()", ".bfloat16()"))
    pytester.runpytest("--compress-report=report.json").assert_outcomes(passed=1)
    assert checks(pytester)["test_fp16"]["cached"] is False


CLAIMS = """
import pytest
import torch

from pytest_compress import compress_model as engine_compress


@pytest.fixture
def claims_int4():  # ships int8 codes while its docs say int4
    return lambda model, data: engine_compress(model, quantize="int8")


@pytest.fixture
def claims_90_percent():  # prunes 60 % while its docs say 90 %
    return lambda model, data: engine_compress(model, prune=0.6)
"""


def test_a_compressor_that_does_not_ship_what_it_claims_fails_naming_the_layer(
    pytester,
) -> None:
    project(
        pytester,
        """
        import pytest

        @pytest.mark.compress(compressor="claims_int4", quantize="int4", max_accuracy_drop=0.5)
        def test_int4(): pass

        @pytest.mark.compress(compressor="claims_90_percent", prune=0.9, max_accuracy_drop=0.5)
        def test_pruned(): pass

        @pytest.mark.compress(compressor="claims_int4", quantize="int4", max_accuracy_drop=0.5,
                              verify=False)
        def test_unverified(): pass
        """,
    )
    conftest = pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text() + textwrap.dedent(CLAIMS))
    result = pytester.runpytest("--compress-report=report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*recipe not held: 2: channel * holds * distinct values; 4 bits allow 16*",
            "*recipe not held: 0: * zeros of 1024; 922 claimed (prune 90% (layer, magnitude))*",
        ],
        consecutive=False,
    )
    entries = checks(pytester)
    assert entries["test_int4"]["broken_invariants"][0].startswith("2: channel 0 holds ")
    assert entries["test_int4"]["sensitivity"] is None  # no metric damage to blame layers for
    assert [v["budget"] for v in entries["test_pruned"]["violations"]] == ["recipe_invariant"]
    assert entries["test_unverified"]["broken_invariants"] == []
    off = pytester.runpytest("--compress-no-verify", "-p", "no:cacheprovider")
    off.assert_outcomes(passed=3)
