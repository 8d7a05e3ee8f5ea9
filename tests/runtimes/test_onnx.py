"""ONNX Runtime: the deployed artifact against the same file run by hand, its size, and the
user's model left alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import prune_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import CompressError, DataError, ModelError, SpecError
from pytest_compress.runtimes import onnx_backend, registry
from pytest_compress.runtimes.onnx_backend import deploy_onnx, export_onnx
from tests.models import Net, seeded
from tests.runtimes.conftest import mlp, same_state, state

INT8 = QuantSpec(bits=8)
W8A8 = QuantSpec(bits=8, activation_bits=8)


def by_hand(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The file run by a fresh session of onnxruntime's own, fed by name."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def only_input(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The float MLP exported once for the module (the caller's cache, as a runner keeps it)."""
    path = tmp_path_factory.mktemp("export") / "float.onnx"
    export_onnx(mlp(), torch.randn(8, 64), path)
    return path


def test_int8_predicts_what_the_quantized_file_predicts_by_hand(tmp_path, batch, exported):
    deployed = deploy_onnx(mlp(), INT8, None, batch[:8], None, tmp_path, exported=exported)
    expected = by_hand(deployed.path, {only_input(deployed.path): batch.numpy()})[0]
    outputs = deployed.predict(batch)
    assert isinstance(outputs, torch.Tensor) and outputs.shape == (256, 10)
    assert np.array_equal(outputs.numpy(), expected)
    # Quantized for real: integer matmuls in the graph, outputs near the float model's.
    ops = {node.op_type for node in onnx.load(str(deployed.path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    reference = mlp()(batch).detach()
    assert 0 < (outputs - reference).abs().max() < 0.05 * reference.abs().max()


def test_the_size_is_the_file_and_the_file_loads_back(tmp_path, batch, exported):
    deployed = deploy_onnx(mlp(), INT8, None, batch[:8], None, tmp_path, exported=exported)
    assert deployed.files == (tmp_path / "int8.onnx",)
    assert deployed.size_bytes == os.path.getsize(deployed.path)
    assert deployed.size_bytes < 0.3 * os.path.getsize(exported)  # int8 weights, not float
    onnx.checker.check_model(str(deployed.path))
    assert deployed.saved_as.startswith("ONNX file (int8 per-channel, dynamic) ")
    assert sorted(os.listdir(tmp_path)) == ["int8.onnx"]  # no staging folder left behind


def test_the_users_model_is_unchanged(tmp_path, model, batch):
    model.train()
    before = state(model)
    deploy_onnx(model, W8A8, PruneSpec(amount=0.5), batch[:8], [batch[:32]], tmp_path)
    assert same_state(model, before)
    assert model.training


def test_pruning_happens_in_torch_before_export(tmp_path, batch):
    spec = PruneSpec(amount=0.5)
    deployed = deploy_onnx(mlp(), INT8, spec, batch[:8], None, tmp_path)
    pruned = prune_model(mlp(), spec)
    expected = pruned(batch).detach().numpy()
    float_outputs = by_hand(tmp_path / "float.onnx", {only_input(deployed.path): batch.numpy()})
    np.testing.assert_allclose(float_outputs[0], expected, atol=1e-4)
    # The int8 file holds the zeros: the quantized weights are half zeros.
    weights = [
        onnx.numpy_helper.to_array(tensor)
        for tensor in onnx.load(str(deployed.path)).graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 2
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert len(weights) == 3 and zeros >= 0.5


def test_w8a8_is_static_qdq_calibrated_and_matches_the_file_by_hand(
    tmp_path, batch, calibration, exported
):
    deployed = deploy_onnx(mlp(), W8A8, None, batch[:8], calibration, tmp_path, exported=exported)
    graph = onnx.load(str(deployed.path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and "DequantizeLinear" in ops
    expected = by_hand(deployed.path, {only_input(deployed.path): batch.numpy()})[0]
    assert np.array_equal(deployed.predict(batch).numpy(), expected)
    assert deployed.path.name == "w8a8.onnx"


def test_w8a8_needs_calibration_batches(tmp_path, batch, exported):
    with pytest.raises(DataError, match="calibrates w8a8 activation ranges on data"):
        deploy_onnx(mlp(), W8A8, None, batch[:8], None, tmp_path, exported=exported)
    with pytest.raises(DataError, match="calibration_data yielded no batches"):
        deploy_onnx(mlp(), W8A8, None, batch[:8], [], tmp_path, exported=exported)
    assert not [name for name in os.listdir(tmp_path) if not name.startswith("float")]


def test_a_convolutional_net(tmp_path):
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    deployed = deploy_onnx(seeded(Net()), INT8, None, images[:2], None, tmp_path)
    expected = by_hand(deployed.path, {only_input(deployed.path): images.numpy()})[0]
    assert np.array_equal(deployed.predict(images).numpy(), expected)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.dense = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embed(ids).mean(1) + self.dense(features)
        return self.head(hidden), hidden


def test_tuple_and_dict_inputs_map_to_the_graphs_inputs_by_position_and_name(tmp_path):
    generator = torch.Generator().manual_seed(4)
    ids, features = torch.randint(0, 20, (6, 5), generator=generator), torch.randn(6, 16)
    model = seeded(TwoInputs())
    deployed = deploy_onnx(model, INT8, None, {"ids": ids, "features": features}, None, tmp_path)
    expected = by_hand(deployed.path, {"ids": ids.numpy(), "features": features.numpy()})
    for inputs in ({"features": features, "ids": ids}, (ids, features)):
        outputs = deployed.predict(inputs)
        assert isinstance(outputs, tuple) and len(outputs) == 2
        assert all(np.array_equal(o.numpy(), e) for o, e in zip(outputs, expected, strict=True))
    with pytest.raises(DataError, match="the batch's dict lacks \\['ids'\\]"):
        deployed.predict({"features": features})
    with pytest.raises(DataError, match="takes 2 inputs"):
        deployed.predict(features)


def test_numpy_float64_inputs_are_fed_as_the_graphs_float32(tmp_path, batch, exported):
    deployed = deploy_onnx(mlp(), INT8, None, batch[:8], None, tmp_path, exported=exported)
    as_float64 = batch.numpy().astype(np.float64)
    assert torch.equal(deployed.predict(as_float64), deployed.predict(batch))


def test_external_data_counts_every_file(tmp_path, batch):
    exported = tmp_path / "export" / "float.onnx"
    files = export_onnx(mlp(), batch[:8], exported, external_data=True)
    assert files == (exported, exported.with_name("float.onnx.data"))
    deployed = deploy_onnx(mlp(), INT8, None, batch[:8], None, tmp_path, exported=exported)
    assert deployed.files == (tmp_path / "int8.onnx", tmp_path / "int8.onnx.data")
    assert deployed.size_bytes == sum(os.path.getsize(path) for path in deployed.files)
    assert "with external data (2 files)" in deployed.saved_as
    expected = by_hand(deployed.path, {only_input(deployed.path): batch.numpy()})[0]
    assert np.array_equal(deployed.predict(batch).numpy(), expected)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on values: torch.export cannot trace it
            return self.dense(x)
        return x


def test_an_unexportable_model_is_a_model_error_and_leaves_no_file(tmp_path):
    with pytest.raises(ModelError) as caught:
        deploy_onnx(DataDependent(), INT8, None, torch.randn(4, 8), None, tmp_path)
    message = str(caught.value)
    assert message.startswith("cannot export DataDependent to ONNX for runtime='onnxruntime': ")
    assert "data-dependent" in message and "\x1b[" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert os.listdir(tmp_path) == []


def test_a_refused_recipe_or_a_missing_extra_stops_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="cannot run 'int4'"):
        deploy_onnx(mlp(), QuantSpec(bits=4), None, torch.randn(2, 64), None, tmp_path)
    monkeypatch.setattr(registry, "_find_spec", lambda name: None)
    with pytest.raises(CompressError, match=r'pip install "pytest-compress\[onnx\]"'):
        deploy_onnx(mlp(), INT8, None, torch.randn(2, 64), None, tmp_path)
    assert os.listdir(tmp_path) == []


def test_threads_reach_the_session(tmp_path, exported):
    session = onnx_backend.open_session(exported, threads=2)
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_session_options().inter_op_num_threads == 1
    assert session.get_providers() == ["CPUExecutionProvider"]
