"""Test what ships: the same recipes deployed on real runtimes, judged on the artifact.

Each check deploys with the runtime's own tools, measures the artifact on the held-out
test split, compares it with the simulation of the same recipe (``max_fidelity_gap``),
and, for ONNX Runtime, times it against the float model in eager PyTorch
(``max_latency_ratio``: interleaved rounds, a 95 % interval; one thread).
"""

import onnxruntime
import pytest
import torch
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

from pytest_compress import Compressed

MLP = {"model": "digits_mlp", "data": "digits_vectors"}


@pytest.mark.compress(
    quantize="int8",
    runtime="onnxruntime",
    max_accuracy_drop=0.005,
    max_fidelity_gap=0.005,
    max_size_ratio=0.3,
)
def test_lenet_onnxruntime_int8():
    """ONNX Runtime dynamic int8 (per channel) of the LeNet: as accurate as simulated.

    No latency budget: ONNX Runtime's dynamic int8 convolutions run about 2x *slower* than
    the float LeNet in eager PyTorch on this CPU (see benchmarks/bench_runtimes.py).
    """


@pytest.mark.compress(
    quantize="int8",
    runtime="onnxruntime",
    max_accuracy_drop=0.005,
    max_fidelity_gap=0.005,
    max_latency_ratio=0.75,
    **MLP,
)
def test_mlp_onnxruntime_int8_faster():
    """The MLP in ONNX Runtime int8 runs at about 0.6x the float time: 0.75 holds it there."""


@pytest.mark.compress(
    quantize="w8a8",
    runtime="onnxruntime",
    max_accuracy_drop=0.005,
    max_fidelity_gap=0.005,
    **MLP,
    calibration_data="digits_vectors_validation",
)
def test_mlp_onnxruntime_w8a8():
    """Static QDQ int8, calibrated on the validation split."""


@pytest.mark.compress(
    quantize="int8", runtime="torchao", max_accuracy_drop=0.005, max_fidelity_gap=0.005, **MLP
)
def test_mlp_torchao_int8():
    """torchao int8 weight-only."""


@pytest.fixture
def hand_written_onnx(tmp_path):
    """The team's own pipeline: export, pre-process, dynamic int8, an InferenceSession."""

    def build(model, calibration_data):
        example = next(iter(calibration_data))[0]
        program = torch.onnx.export(
            model, (example,), dynamo=True, verbose=False,
            dynamic_shapes=({0: torch.export.Dim.AUTO},),
        )  # fmt: skip
        program.save(str(tmp_path / "float.onnx"))
        quant_pre_process(str(tmp_path / "float.onnx"), str(tmp_path / "prepared.onnx"))
        quantize_dynamic(
            str(tmp_path / "prepared.onnx"), str(tmp_path / "lenet-int8.onnx"),
            weight_type=QuantType.QInt8, per_channel=True,
        )  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(tmp_path / "lenet-int8.onnx"), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def predict(images):
            return torch.from_numpy(session.run(None, {name: images.numpy()})[0])

        return Compressed(predict=predict, path=tmp_path / "lenet-int8.onnx")

    return build


@pytest.mark.compress(
    compressor="hand_written_onnx",
    quantize="int8",
    max_accuracy_drop=0.005,
    max_fidelity_gap=0.005,
    max_size_ratio=0.3,
)
def test_lenet_own_onnx_pipeline():
    """The team's hand-written ONNX Runtime pipeline, gated like a built-in recipe."""
