"""compressed_size: the bytes the saved file will have, counted in memory, to the byte."""

from __future__ import annotations

import pytest
import torch

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec
from pytest_compress.fileformat.container import compressed_size, save_compressed
from tests.models import Net, TiedEmbeddingModel, seeded


@pytest.mark.parametrize(
    "recipe",
    [
        {},
        {"quantize": "int8"},
        {"quantize": "int3", "prune": 0.9},
        {"prune": PruneSpec(amount=0.5, scope="global")},
        {"quantize": "w4a8", "prune": "2:4"},
        {"prune": PruneSpec(activation_threshold=0.1)},
    ],
    ids=["float", "int8", "int3-pruned", "pruned", "w4a8-2:4", "activation-pruning"],
)
def test_compressed_size_is_the_bytes_of_the_saved_file(tmp_path, recipe) -> None:
    # compressed_size counts in memory; it must be the size of the file, to the byte.
    model = seeded(Net())
    if recipe:
        calibration = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
        model = compress_model(model, **recipe, calibration_data=calibration)
    written = save_compressed(model, tmp_path / "net.ptc")
    assert compressed_size(model) == written == (tmp_path / "net.ptc").stat().st_size


def test_compressed_size_of_a_tied_model_is_the_bytes_of_the_saved_file(tmp_path) -> None:
    model = compress_model(seeded(TiedEmbeddingModel()), quantize="int4", prune=0.5)
    written = save_compressed(model, tmp_path / "tied.ptc")
    assert compressed_size(model) == written == (tmp_path / "tied.ptc").stat().st_size
