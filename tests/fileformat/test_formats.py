"""Format version 2: group-wise scales and float formats round-trip bit for bit and are
counted in the size; version-1 files (written before them) still load."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import FileFormatError
from pytest_compress.fileformat import container as packing
from pytest_compress.fileformat.container import (
    compressed_size,
    load_compressed,
    save_compressed,
)
from tests.fileformat.test_packing import (
    LENET_INPUT,
    build_resnet18,
    build_tiny_mlp,
    check_round_trip,
    lenet,
    model_size,
    rewrite,
)

DATA = Path(__file__).parent / "data"
RECIPES = [
    "int4-g16",
    "int3-g7",
    QuantSpec(bits=4, group_size=32, symmetric=True, scale_dtype="bfloat16"),
    QuantSpec(bits=6, group_size=20, scale_dtype="float32", parameters="all"),
    "int4-g16-mse",
    "int3-g16-gptq",
    "int4-gptq",
    "fp16",
    "bf16",
    "fp8",
    "fp8-e5m2",
    QuantSpec(format="fp8", per_channel=False, scale_dtype="float16"),
    QuantSpec(format="bf16", parameters="all"),
]


@pytest.mark.parametrize("prune", [None, 0.6], ids=["dense", "pruned"])
@pytest.mark.parametrize(
    "quantize", RECIPES, ids=lambda q: q if isinstance(q, str) else repr(q.describe())
)
def test_new_recipes_round_trip_bit_for_bit(quantize, prune, tmp_path: Path) -> None:
    compressed = compress_model(
        lenet(), quantize=quantize, prune=prune, calibration_data=[LENET_INPUT]
    )
    check_round_trip(compressed, lenet(), LENET_INPUT, tmp_path)


def test_a_version_1_file_still_loads(tmp_path: Path) -> None:
    # written by the format-1 writer (before group-wise scales and float formats)
    path = DATA / "version1_tiny_mlp_int4_all_prune50.ptcz"
    assert path.read_bytes()[4:6] == (1).to_bytes(2, "little")
    expected = compress_model(
        build_tiny_mlp(),
        quantize=QuantSpec(bits=4, parameters="all"),
        prune=PruneSpec(amount=0.5, activation_threshold=0.1),
    )
    loaded = load_compressed(path, build_tiny_mlp())
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    again = tmp_path / "again.ptcz"
    save_compressed(loaded, again)
    assert again.read_bytes()[4:6] == (packing.FORMAT_VERSION).to_bytes(2, "little")


def test_a_version_1_file_cannot_hold_version_2_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.ptcz"
    save_compressed(compress_model(build_tiny_mlp(), quantize="int4-g2"), path)
    rewrite(path, version=1)
    with pytest.raises(FileFormatError, match="malformed quantization"):
        load_compressed(path, build_tiny_mlp())


def header(path: Path) -> dict:
    data = path.read_bytes()
    _, _, length, _ = packing._PREFIX.unpack_from(data)
    start = packing._PREFIX.size
    return json.loads(zlib.decompress(data[start : start + length]))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("q", lambda q: [*q[:6], 0], "group size 0"),
        ("q", lambda q: [*q[:6], 1], "scales for"),
        ("f", lambda f: ["fp4", *f[1:]], "malformed float format"),
        ("f", lambda f: [f[0], f[1], f[2], [7]], "scales of shape"),
    ],
)
def test_bad_version_2_fields_are_refused(field, value, message, tmp_path: Path) -> None:
    path = tmp_path / "m.ptcz"
    quantize = "int4-g2" if field == "q" else "fp8"
    save_compressed(compress_model(build_tiny_mlp(), quantize=quantize), path)

    def edit(doc: dict) -> None:
        entry = next(e for e in doc["t"] if e["k"] == "0.weight")
        entry[field] = value(entry[field])

    rewrite(path, edit_header=edit)
    with pytest.raises(FileFormatError, match=message):
        load_compressed(path, build_tiny_mlp())


def test_group_scales_and_zero_points_are_counted() -> None:
    model = nn.Linear(1024, 16, bias=False)
    per_channel = compressed_size(compress_model(model, quantize="int4"))
    grouped = compressed_size(compress_model(model, quantize="int4-g32"))
    # 32 groups per channel instead of 1: a float16 scale and a 4-bit zero point each,
    # in place of one float32 scale (header bytes aside)
    extra = 16 * 32 * 2 + 16 * 32 // 2 - (16 * 4 + 16 // 2)
    assert grouped - per_channel == pytest.approx(extra, abs=16)


@pytest.mark.parametrize(("shorthand", "per_weight"), [("fp16", 2), ("bf16", 2), ("fp8", 1)])
def test_float_formats_cost_their_width(shorthand: str, per_weight: int) -> None:
    big = compressed_size(compress_model(nn.Linear(1000, 10, bias=False), quantize=shorthand))
    small = compressed_size(compress_model(nn.Linear(1, 10, bias=False), quantize=shorthand))
    assert big - small == pytest.approx(999 * 10 * per_weight, abs=8)


def test_resnet18_int4_g128_with_float16_scales_is_at_most_0135_of_float() -> None:
    model = build_resnet18()
    spec = QuantSpec(bits=4, group_size=128, allow_short_rows=True)  # 1x1 convs: 64 inputs
    ratio = compressed_size(compress_model(model, quantize=spec)) / model_size(model)
    assert ratio <= 0.135
