"""save_compressed / load_compressed: bit packing, sparse layouts, round trips, honest sizes,
and a loader that turns every bad file into a FileFormatError (a ValueError)."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pytest_compress.engine.activations import (
    ActivationFakeQuantize,
    ActivationPrune,
    activation_hooks,
    add_activation_hook,
)
from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.floats import FloatParams
from pytest_compress.engine.quant import dequantize, quantize
from pytest_compress.engine.record import CompressionRecord, QuantParams, get_record, set_record
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import FileFormatError, ModelError
from pytest_compress.fileformat import container as packing
from pytest_compress.fileformat import encoding
from pytest_compress.fileformat.container import MAGIC, load_compressed, save_compressed
from pytest_compress.fileformat.encoding import (
    Layout,
    choose_layout,
    decode_index,
    encode_index,
    layout_sizes,
    pack_bits,
    packed_size,
    unpack_bits,
)
from tests.models import Net, TiedEmbeddingModel, mlp, seeded

LENET_INPUT = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
IMAGE_INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
MLP_INPUT = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))


def model_size(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bits, dtype and shape: stricter than torch.equal (NaN, -0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


# --- bit packing ----------------------------------------------------------------------------


def reference_pack(values: list[int], bits: int) -> bytes:
    """The documented layout, one bit at a time: code i at bits i*bits.. of a little-endian int."""
    number = 0
    for i, value in enumerate(values):
        number |= value << (i * bits)
    return number.to_bytes(packed_size(len(values), bits), "little")


@st.composite
def codes(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.integers(1, 16))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200))
    return bits, values


@given(codes())
def test_bit_packing_round_trips_at_exactly_bits_per_code(case: tuple[int, list[int]]) -> None:
    bits, values = case
    packed = pack_bits(np.array(values, dtype=np.int64), bits)
    assert len(packed) == math.ceil(len(values) * bits / 8)
    assert packed == reference_pack(values, bits)
    assert unpack_bits(packed, bits, len(values)).tolist() == values


@pytest.mark.parametrize("bits", [3, 5, 7, 13])
def test_the_chunked_packer_agrees_across_chunk_boundaries(monkeypatch, bits: int) -> None:
    monkeypatch.setattr(encoding, "_CHUNK_CODES", 16)
    values = np.random.default_rng(bits).integers(0, 1 << bits, size=101)
    packed = pack_bits(values, bits)
    assert packed == reference_pack(values.tolist(), bits)
    assert unpack_bits(packed, bits, values.size).tolist() == values.tolist()


def test_packing_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_bits(np.array([16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        pack_bits(np.array([-1]), 3)


def test_unpacking_rejects_a_wrong_length_or_stray_padding_bits() -> None:
    with pytest.raises(FileFormatError, match="take 2 bytes, got 3"):
        unpack_bits(b"\x00\x00\x00", 4, 3)
    with pytest.raises(FileFormatError, match="unused"):
        unpack_bits(b"\x00\xf0", 4, 3)  # the 4th nibble is padding and must be zero


# --- sparse layouts -------------------------------------------------------------------------


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """Nonzero masks: arbitrary, empty, full, and runs of zeros longer than 255."""
    kind = draw(st.sampled_from(["any", "runs", "full", "empty"]))
    if kind == "any":
        return np.array(draw(st.lists(st.booleans(), max_size=300)), dtype=bool)
    if kind == "full":
        return np.ones(draw(st.integers(0, 300)), dtype=bool)
    if kind == "empty":
        return np.zeros(draw(st.integers(0, 300)), dtype=bool)
    gaps = draw(st.lists(st.integers(0, 1200), min_size=1, max_size=12))
    parts = [np.concatenate([np.zeros(gap, dtype=bool), [True]]) for gap in gaps]
    return np.concatenate([*parts, np.zeros(draw(st.integers(0, 600)), dtype=bool)])


@given(masks(), st.sampled_from([2, 4, 8, 32]))
def test_every_layout_round_trips_and_the_smallest_is_chosen(
    nonzero: np.ndarray, value_bits: int
) -> None:
    values = np.where(nonzero, np.arange(nonzero.size) % 3 + 1, 0)
    sizes = layout_sizes(nonzero, value_bits)
    assert {layout.name for _, layout in sizes} >= {"dense", "mask"}
    for size, layout in sizes:
        index, positions = encode_index(nonzero, layout)
        # The stated size is the real size: index blob plus the packed stored values.
        assert len(index) + packed_size(positions.size, value_bits) == size
        decoded = decode_index(index, layout, nonzero.size, positions.size)
        assert decoded.tolist() == positions.tolist()
        rebuilt = np.zeros(nonzero.size, dtype=values.dtype)
        rebuilt[decoded] = values[decoded]
        assert rebuilt.tolist() == values.tolist()
        # Only fillers (gaps layout) may store a zero; every nonzero is stored.
        assert set(np.flatnonzero(nonzero)) <= set(decoded.tolist())
    chosen = choose_layout(nonzero, value_bits)
    assert dict((layout, size) for size, layout in sizes)[chosen] == min(s for s, _ in sizes)


@given(masks(), st.sampled_from([2, 4, 8, 32]))
def test_the_chosen_layout_is_the_smallest_of_every_gap_width(
    nonzero: np.ndarray, value_bits: int
) -> None:
    # layout_sizes skips widths that cannot win; the exhaustive minimum must agree.
    kept = int(nonzero.sum())
    every = [
        (packed_size(nonzero.size, value_bits), Layout("dense")),
        (packed_size(nonzero.size, 1) + packed_size(kept, value_bits), Layout("mask")),
    ]
    if kept < nonzero.size:
        for gap_bits in range(1, encoding.MAX_GAP_BITS + 1):
            _, positions = encode_index(nonzero, Layout("gaps", gap_bits))
            cost = packed_size(positions.size, gap_bits) + packed_size(positions.size, value_bits)
            every.append((cost, Layout("gaps", gap_bits)))
    assert choose_layout(nonzero, value_bits) == min(every, key=lambda pair: pair[0])[1]


def test_gaps_longer_than_the_width_are_bridged_by_filler_entries() -> None:
    nonzero = np.zeros(1000, dtype=bool)
    nonzero[[3, 600, 999]] = True  # gaps 3, 596 and 398
    index, positions = encode_index(nonzero, Layout("gaps", 8))
    # 596 = 2 * 256 + 84 and 398 = 256 + 142: three fillers at 256-element steps.
    assert positions.tolist() == [3, 259, 515, 600, 856, 999]
    assert unpack_bits(index, 8, 6).tolist() == [3, 255, 255, 84, 255, 142]


def test_a_very_sparse_tensor_is_stored_as_gaps_a_half_empty_one_as_a_mask() -> None:
    sparse = np.zeros(10_000, dtype=bool)
    sparse[::500] = True
    assert choose_layout(sparse, 8).name == "gaps"
    half = np.random.default_rng(0).random(10_000) < 0.5
    assert choose_layout(half, 8).name == "mask"
    assert choose_layout(np.ones(100, dtype=bool), 8).name == "dense"


@pytest.mark.parametrize(
    ("layout", "blob", "message"),
    [
        (Layout("mask"), bytes([0b111]), "marks 3 elements, the header says 2"),
        (Layout("gaps", 4), bytes([0xFF]), "past the 8 elements"),  # gaps 15, 15: position 31
        (Layout("dense"), b"\x00", "no index"),
        (Layout("rle"), b"", "unknown layout"),
    ],
)
def test_decoding_a_bad_index_raises(layout: Layout, blob: bytes, message: str) -> None:
    with pytest.raises(FileFormatError, match=message):
        decode_index(blob, layout, 8, 2)


# --- models ---------------------------------------------------------------------------------


def lenet() -> Net:
    return seeded(Net())


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


def hook_summary(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, repr(hook)) for name, hook in activation_hooks(model)]


def assert_same_record(a: nn.Module, b: nn.Module) -> None:
    ra, rb = get_record(a).quantized, get_record(b).quantized
    assert ra.keys() == rb.keys()
    for key in ra:
        pa, pb = ra[key], rb[key]
        assert type(pa) is type(pb), key
        if isinstance(pa, FloatParams) or isinstance(pb, FloatParams):
            assert isinstance(pa, FloatParams) and isinstance(pb, FloatParams)
            assert (pa.format, pa.axis) == (pb.format, pb.axis), key
            assert (pa.scale is None) == (pb.scale is None), key
            assert pa.scale is None or pb.scale is None or bitwise_equal(pa.scale, pb.scale)
            continue
        assert (pa.bits, pa.axis, pa.qmin, pa.qmax, pa.group_size) == (
            pb.bits,
            pb.axis,
            pb.qmin,
            pb.qmax,
            pb.group_size,
        ), key
        assert bitwise_equal(pa.scale, pb.scale), key
        assert torch.equal(pa.zero_point.to(torch.int64), pb.zero_point.to(torch.int64)), key


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": [list(m._forward_hooks.values()) for m in model.modules()],
        "record": model.__dict__.get("_pytest_compress_record"),
        "training": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert bitwise_equal(after["state"][key], value), f"{key} changed"
    assert after["hooks"] == before["hooks"]
    assert after["record"] is before["record"]
    assert after["training"] == before["training"]


def check_round_trip(
    compressed: nn.Module, fresh: nn.Module, inputs: torch.Tensor, tmp_path: Path
) -> nn.Module:
    """Save, load into ``fresh``, and check everything the loaded copy must reproduce."""
    first, second = tmp_path / "first.ptcz", tmp_path / "second.ptcz"
    written = save_compressed(compressed, first)
    assert written == first.stat().st_size
    before = snapshot(fresh)
    loaded = load_compressed(first, fresh)
    assert_unchanged(fresh, before)
    assert torch.equal(outputs(loaded, inputs), outputs(compressed, inputs))
    expected, actual = compressed.state_dict(), loaded.state_dict()
    assert list(actual) == list(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
        assert actual[key].dtype == expected[key].dtype, key
    assert_same_record(loaded, compressed)
    assert hook_summary(loaded) == hook_summary(compressed)
    save_compressed(loaded, second)
    assert second.read_bytes() == first.read_bytes()
    return loaded


def build_mlp() -> nn.Module:
    return seeded(mlp())


# torchvision is imported where it is used: every xdist worker collects this module, and
# only the one that runs these two builds should pay for the import.
def build_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def build_mobilenet() -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    return mobilenet_v3_small(weights=None).eval()


MODELS = {
    "mlp": (build_mlp, MLP_INPUT),
    "lenet": (lenet, LENET_INPUT),
    "resnet18": (build_resnet18, IMAGE_INPUT),
    "mobilenet_v3_small": (build_mobilenet, IMAGE_INPUT),
}


# Every recipe on the small models; on the real architectures (batch norm, downsampling
# shortcuts, depthwise convolutions, squeeze-excitation) the two extremes, which between
# them hold byte-aligned and sub-byte codes, dense and sparse layouts: the cost of a
# round trip grows with the model, and the recipe does not depend on the architecture.
RECIPES = [(bits, prune) for bits in (8, 4, 2) for prune in (None, 0.9)]
ROUND_TRIPS = [
    pytest.param(name, bits, prune, id=f"{name}-{bits}-{'pruned90' if prune else 'dense'}")
    for name in MODELS
    for bits, prune in RECIPES
    if name in ("mlp", "lenet") or (bits, prune) in ((8, None), (2, 0.9))
]


@pytest.mark.parametrize(("name", "bits", "prune"), ROUND_TRIPS)
def test_save_then_load_reproduces_the_compressed_model(
    name: str, bits: int, prune: float | None, tmp_path: Path
) -> None:
    build, inputs = MODELS[name]
    model = build()
    compressed = compress_model(model, quantize=f"int{bits}", prune=prune)
    check_round_trip(compressed, build(), inputs, tmp_path)


def test_activation_hooks_are_stored_and_put_back_in_order(tmp_path: Path) -> None:
    model = lenet()
    calibration = [LENET_INPUT[:2], LENET_INPUT[2:]]
    compressed = compress_model(
        model,
        quantize="w4a8",
        prune=PruneSpec(amount=0.5, activation_threshold=0.2),
        calibration_data=calibration,
    )
    kinds = [type(hook) for _, hook in activation_hooks(compressed)]
    assert ActivationPrune in kinds and ActivationFakeQuantize in kinds
    loaded = check_round_trip(compressed, lenet(), LENET_INPUT, tmp_path)
    # Hooks already on the target are replaced, not doubled, and the target keeps its own.
    before = snapshot(loaded)
    again = load_compressed(tmp_path / "first.ptcz", loaded)
    assert hook_summary(again) == hook_summary(compressed)
    assert_unchanged(loaded, before)


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(bits=4, symmetric=True),
        QuantSpec(bits=6, parameters="all"),
        QuantSpec(bits=3, per_channel=False),
        QuantSpec(bits=16),
    ],
    ids=["int4-symmetric", "int6-all-parameters", "int3-per-tensor", "int16"],
)
def test_other_quantization_recipes_round_trip(spec: QuantSpec, tmp_path: Path) -> None:
    compressed = compress_model(lenet(), quantize=spec, prune=0.6)
    check_round_trip(compressed, lenet(), LENET_INPUT, tmp_path)


class Buffers(nn.Module):
    """Every dtype the format stores, sparse and dense, including 0-d and empty tensors."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        dense = torch.randn(40, generator=g)
        sparse = torch.where(torch.arange(400) % 37 == 0, torch.randn(400, generator=g), 0.0)
        self.linear = nn.Linear(4, 4).double()
        self.register_buffer("f16", dense.half())
        self.register_buffer("bf16", sparse.bfloat16())
        self.register_buffer("c64", torch.complex(dense, -dense))
        self.register_buffer("i64", (sparse * 100).to(torch.int64))
        self.register_buffer("i8", (dense * 10).to(torch.int8))
        self.register_buffer("u8", (dense * 10).abs().to(torch.uint8))
        self.register_buffer("flags", sparse != 0)
        self.register_buffer("scalar", torch.tensor(3.5))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("negative_zero", torch.tensor([-0.0, 1.0, -0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.double()) * self.scalar


def test_every_dtype_round_trips_bit_for_bit(tmp_path: Path) -> None:
    model = Buffers()
    compressed = compress_model(model, quantize="int5")  # a float64 weight, float64 scales
    assert get_record(compressed).quantized["linear.weight"].scale.dtype == torch.float64
    loaded = check_round_trip(compressed, Buffers(), torch.randn(2, 4), tmp_path)
    for key, value in compressed.state_dict().items():
        if key != "negative_zero":
            assert bitwise_equal(loaded.state_dict()[key], value), key
    # A sparse layout leaves zeros out, so -0.0 comes back as +0.0 (documented).
    assert bitwise_equal(loaded.negative_zero, torch.tensor([0.0, 1.0, 0.0]))


# --- honest sizes ---------------------------------------------------------------------------


def size_ratio(model: nn.Module, reference: nn.Module, tmp_path: Path) -> float:
    return save_compressed(model, tmp_path / "model.ptcz") / model_size(reference)


def test_lenet_sizes_meet_the_promised_ratios(tmp_path: Path) -> None:
    model = lenet()
    int8 = size_ratio(compress_model(model, quantize="int8"), model, tmp_path)
    int4 = size_ratio(compress_model(model, quantize="int4"), model, tmp_path)
    int2 = size_ratio(compress_model(model, quantize="int2"), model, tmp_path)
    deep = compress_model(model, quantize="int8", prune=PruneSpec(amount=0.9, scope="global"))
    pruned = size_ratio(deep, model, tmp_path)
    assert int8 <= 0.27
    assert int4 <= 0.15
    assert int2 < int4 < int8
    assert pruned <= 0.08


def test_a_float_model_is_not_reported_smaller_than_it_is(tmp_path: Path) -> None:
    model = lenet()
    dense = save_compressed(model, tmp_path / "dense.ptcz")
    assert dense >= 0.95 * model_size(model)
    # Pruned, it is honestly smaller: the zeros are left out, not merely present.
    pruned = compress_model(model, prune=0.5)
    assert save_compressed(pruned, tmp_path / "pruned.ptcz") < 0.6 * dense
    check_round_trip(pruned, lenet(), LENET_INPUT, tmp_path)


def test_a_4_bit_weight_costs_half_a_byte(tmp_path: Path) -> None:
    model = nn.Linear(1000, 10, bias=False)
    small = nn.Linear(1, 10, bias=False)
    big = save_compressed(compress_model(model, quantize="int4"), tmp_path / "big.ptcz")
    tiny = save_compressed(compress_model(small, quantize="int4"), tmp_path / "tiny.ptcz")
    assert big - tiny == pytest.approx(999 * 10 / 2, abs=8)


# --- tied tensors ---------------------------------------------------------------------------


def header(path: Path) -> dict:
    data = path.read_bytes()
    _, _, length, _ = packing._PREFIX.unpack_from(data)
    start = packing._PREFIX.size
    return json.loads(zlib.decompress(data[start : start + length]))


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_tied_weights_are_stored_once_and_stay_tied(quantize: str | None, tmp_path: Path) -> None:
    model = seeded(TiedEmbeddingModel())
    compressed = compress_model(model, quantize=quantize) if quantize else model
    tokens = torch.arange(20).reshape(4, 5)
    loaded = check_round_trip(compressed, seeded(TiedEmbeddingModel()), tokens, tmp_path)
    assert loaded.out.weight is loaded.embed.weight
    aliases = [e for e in header(tmp_path / "first.ptcz")["t"] if "a" in e]
    assert [(e["k"], e["a"]) for e in aliases] == [("out.weight", "embed.weight")]

    untied = copy.deepcopy(compressed)
    untied.out.weight = nn.Parameter(untied.embed.weight.detach().clone())
    twice = save_compressed(untied, tmp_path / "untied.ptcz")
    once = (tmp_path / "first.ptcz").stat().st_size
    assert twice - once >= 0.9 * 50 * 12 * (1 if quantize else 4)


def test_ties_are_restored_in_a_target_that_lacks_them(tmp_path: Path) -> None:
    model = seeded(TiedEmbeddingModel())
    save_compressed(model, tmp_path / "tied.ptcz")
    target = seeded(TiedEmbeddingModel(), seed=3)
    target.out.weight = nn.Parameter(torch.zeros(50, 12))
    loaded = load_compressed(tmp_path / "tied.ptcz", target)
    assert loaded.out.weight is loaded.embed.weight
    assert target.out.weight is not target.embed.weight  # the target itself is untouched


def test_a_target_that_ties_what_the_file_keeps_apart_is_rejected(tmp_path: Path) -> None:
    model = seeded(TiedEmbeddingModel())
    model.out.weight = nn.Parameter(model.embed.weight.detach() + 1)
    save_compressed(model, tmp_path / "apart.ptcz")
    with pytest.raises(ValueError, match="ties embed.weight and out.weight"):
        load_compressed(tmp_path / "apart.ptcz", seeded(TiedEmbeddingModel()))


# --- bad files ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, nn.Module]:
    compressed = compress_model(build_mlp(), quantize="int4", prune=0.5)
    path = tmp_path / "mlp.ptcz"
    save_compressed(compressed, path)
    return path, compressed


def rewrite(
    path: Path,
    *,
    edit_header=None,
    edit_data=None,
    version: int = packing.FORMAT_VERSION,
    raw_header: bytes | None = None,
) -> None:
    """Rewrite a file with a changed header or data and a correct checksum."""
    data = path.read_bytes()
    _, _, length, _ = packing._PREFIX.unpack_from(data)
    start = packing._PREFIX.size
    doc = json.loads(zlib.decompress(data[start : start + length]))
    body = data[start + length :]
    if edit_header is not None:
        edit_header(doc)
    if edit_data is not None:
        body = edit_data(body)
    head = raw_header if raw_header is not None else zlib.compress(json.dumps(doc).encode())
    crc = zlib.crc32(head + body)
    path.write_bytes(packing._PREFIX.pack(MAGIC, version, len(head), crc) + head + body)


def load_fails(path: Path, match: str, model: nn.Module | None = None) -> None:
    with pytest.raises(FileFormatError, match=match) as info:
        load_compressed(path, model if model is not None else build_mlp())
    assert str(path) in str(info.value)


def entry(doc: dict, key: str) -> dict:
    return next(e for e in doc["t"] if e["k"] == key)


def build_tiny_mlp() -> nn.Module:
    return seeded(mlp(inputs=4, hidden=8, classes=3))


@pytest.fixture
def tiny_saved(saved: tuple[Path, nn.Module], tmp_path: Path) -> Path:
    """``saved`` at a third of the bytes, for the byte-by-byte tests: the same entries
    with the same layouts (mask, gaps, dense; quantized and raw; float32 and int64)."""
    path = tmp_path / "tiny.ptcz"
    save_compressed(compress_model(build_tiny_mlp(), quantize="int4", prune=0.5), path)
    assert header_entries(path) == header_entries(saved[0])
    return path


def header_entries(path: Path) -> list[tuple[str, str, str, bool]]:
    """(key, layout, dtype, quantized) of every tensor entry in the file's header."""
    data = path.read_bytes()
    _, _, length, _ = packing._PREFIX.unpack_from(data)
    start = packing._PREFIX.size
    doc = json.loads(zlib.decompress(data[start : start + length]))
    return [(e["k"], e["e"], e["d"], "q" in e) for e in doc["t"]]


def test_every_truncation_raises(tiny_saved: Path, tmp_path: Path) -> None:
    data = tiny_saved.read_bytes()
    cut, target = tmp_path / "cut.ptcz", build_tiny_mlp()
    for end in range(len(data)):
        cut.write_bytes(data[:end])
        load_fails(cut, "truncated|shorter|not valid|checksum|runs past", target)


def test_every_flipped_byte_raises(tiny_saved: Path, tmp_path: Path) -> None:
    data = tiny_saved.read_bytes()
    bad, target = tmp_path / "bad.ptcz", build_tiny_mlp()
    for offset in range(len(data)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        load_fails(bad, ".", target)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "shorter than the 14-byte prefix"),
        (b"PK\x03\x04" + bytes(40), "wrong magic"),
        (struct.pack("<4sHII", MAGIC, 1, 1000, 0), "runs past the end"),
        (struct.pack("<4sHII", MAGIC, 1, 3, 0) + b"abc", "not valid zlib"),
    ],
)
def test_foreign_files_raise(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "foreign.ptcz"
    path.write_bytes(content)
    load_fails(path, message)


def test_a_torch_save_file_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save(build_mlp().state_dict(), path)
    load_fails(path, "wrong magic")


def test_a_future_version_asks_for_an_upgrade(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    rewrite(path, version=packing.FORMAT_VERSION + 1)
    load_fails(path, f"format version {packing.FORMAT_VERSION + 1} is newer.*upgrade")


def test_a_stale_checksum_is_caught(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    load_fails(path, "checksum mismatch")


def test_trailing_bytes_are_caught(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    rewrite(path, edit_data=lambda body: body + b"\x00")
    load_fails(path, "1 unexpected bytes")


def _set(key: str, field: str, value):
    def edit(doc: dict) -> None:
        entry(doc, key)[field] = value

    return edit


def _drop(key: str):
    def edit(doc: dict) -> None:
        doc["t"] = [e for e in doc["t"] if e["k"] != key]

    return edit


def _add_extra(doc: dict) -> None:
    doc["t"].append({"k": "ghost.weight", "d": "float32", "s": [], "e": "dense", "L": 4})


def _set_quant(position: int, value):
    def edit(doc: dict) -> None:
        entry(doc, "0.weight")["q"][position] = value

    return edit


def _huge_shape(doc: dict) -> None:
    entry(doc, "0.weight")["s"] = [10**12, 10**6]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("0.bias", "L", 10**15), "blob of 1000000000000000 bytes"),
        (_set("0.bias", "L", 3), "blob of 3 bytes.*need 128"),
        (_set("0.weight", "s", [16, 32]), r"shape \(16, 32\) in the file but \(32, 16\)"),
        (_huge_shape, r"shape \(1000000000000, 1000000\) in the file"),
        (_set("0.bias", "d", "float99"), "unknown dtype 'float99'"),
        (_set("0.bias", "d", "float64"), "dtype torch.float64 in the file"),
        (_set("0.weight", "e", "rle"), "unknown encoding 'rle'"),
        (_set("0.weight", "n", 10**9), "stored count"),
        (_set("0.weight", "s", "big"), "shape must be a list"),
        (_drop("2.running_mean"), r"lacks 1 state_dict entries.*2.running_mean"),
        (_add_extra, "ghost.weight is in the file but not in the model"),
        (_set("3.weight", "a", "nowhere"), "not an earlier stored tensor"),
        (_set("3.weight", "a", ["0.weight"]), "not an earlier stored tensor"),
        (_set("3.weight", "a", {"k": 1}), "not an earlier stored tensor"),
        (_set_quant(0, 1), r"bits must be an integer in \[2, 16\]"),
        (_set_quant(1, 5), "axis 5 is out of range"),
        (_set_quant(3, 300), r"qmax must be an integer in \[0, 15\]"),
        (_set_quant(5, [3]), "3 scales for 32 channel"),
        (lambda doc: doc.update(h=[["nowhere", "prune", 0.1]]), "module 'nowhere'"),
        (lambda doc: doc.update(h=[["0", "prune", -1]]), "beta must be a finite"),
        (lambda doc: doc.update(h=[["0", "fq", 0.0, 0, 8, 0, 255]]), "scale must be a finite"),
        (lambda doc: doc.update(h=[["0", "spin"]]), "unknown activation hook"),
        (lambda doc: doc.update(t=7), "no tensor list"),
        (lambda doc: doc["t"].append(["0.weight"]), "malformed tensor entry"),
    ],
)
def test_a_bad_header_raises_a_clear_error(saved: tuple[Path, nn.Module], edit, message) -> None:
    path, _ = saved
    rewrite(path, edit_header=edit)
    load_fails(path, message)


@pytest.mark.parametrize(
    ("raw_header", "message"),
    [
        (zlib.compress(b"{not json"), "not valid JSON"),
        (zlib.compress(b"[" * 100_000 + b"]" * 100_000), "more than [0-9]+ bytes"),
        (zlib.compress(b"\xff\xfe"), "not valid JSON"),
        (zlib.compress(b"[1, 2]"), "not a JSON object"),
        (zlib.compress(b"{}")[:-2], "truncated"),
        (zlib.compress(b"{}") + b"xx", "stray bytes"),
    ],
)
def test_an_unreadable_header_raises(
    saved: tuple[Path, nn.Module], raw_header: bytes, message: str
) -> None:
    path, _ = saved
    rewrite(path, raw_header=raw_header)
    load_fails(path, message)


def test_codes_outside_the_declared_range_are_caught(
    saved: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path, _ = saved
    # Claim qmax 3: the affine zero points (up to 15) now exceed it.
    rewrite(path, edit_header=_set_quant(3, 3))
    load_fails(path, "a zero point exceeds qmax 3")
    # Symmetric codes have zero point 0: claim qmax 0 and only the codes exceed it.
    symmetric = compress_model(build_mlp(), quantize=QuantSpec(bits=4, symmetric=True))
    path = tmp_path / "symmetric.ptcz"
    save_compressed(symmetric, path)
    rewrite(path, edit_header=_set_quant(3, 0))
    load_fails(path, "a code exceeds qmax 0")


def test_a_bool_tensor_holding_other_bytes_is_caught(tmp_path: Path) -> None:
    model = nn.Module()
    model.register_buffer("flags", torch.tensor([True, True, True]))
    path = tmp_path / "flags.ptcz"
    save_compressed(model, path)
    rewrite(path, edit_data=lambda body: b"\x01\x02\x01")
    load_fails(path, "bytes other than 0 and 1", model)


def test_a_file_for_another_model_is_rejected(saved: tuple[Path, nn.Module]) -> None:
    path, _ = saved
    load_fails(path, "not in the model's state_dict|lacks", lenet())
    load_fails(path, "shape", seeded(mlp(hidden=33)))


# --- writing safely -------------------------------------------------------------------------


def test_a_failing_save_leaves_no_file_and_keeps_an_existing_one(tmp_path: Path) -> None:
    compressed = compress_model(lenet(), quantize="int8")
    with torch.no_grad():
        compressed.fc1.weight[0, 0] += 1e-3  # off the grid the record promises
    path = tmp_path / "model.ptcz"
    with pytest.raises(ValueError, match="fc1.weight is no longer on its 8-bit"):
        save_compressed(compressed, path)
    assert list(tmp_path.iterdir()) == []

    path.write_bytes(b"precious")
    with pytest.raises(ValueError):
        save_compressed(compressed, path)
    assert path.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [path]


def test_an_interrupted_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.ptcz"
    path.write_bytes(b"precious")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_compressed(lenet(), path)
    assert path.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [path]


def test_a_saved_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    save_compressed(build_mlp(), tmp_path / "a.ptcz")
    (tmp_path / "b").write_bytes(b"")
    assert (tmp_path / "a.ptcz").stat().st_mode == (tmp_path / "b").stat().st_mode


def test_unsavable_models_raise_before_writing(tmp_path: Path) -> None:
    model = build_mlp()
    add_activation_hook(model[0], ActivationFakeQuantize(float("nan"), 0, 8, 0, 255))
    with pytest.raises(ModelError, match="cannot save"):
        save_compressed(model, tmp_path / "nan.ptcz")

    stray = build_mlp()
    q = quantize(stray[0].weight.detach(), bits=4, axis=0)
    set_record(stray, CompressionRecord({"missing.weight": QuantParams.of(q)}))
    with pytest.raises(ModelError, match="missing.weight"):
        save_compressed(stray, tmp_path / "stray.ptcz")
    assert list(tmp_path.iterdir()) == []


def test_a_hand_made_record_round_trips(tmp_path: Path) -> None:
    """The format needs only the record, not compress_model: a per-tensor 3-bit weight."""
    model = lenet()
    q = quantize(model.fc2.weight.detach(), bits=3)
    with torch.no_grad():
        model.fc2.weight.copy_(dequantize(q))
    set_record(model, CompressionRecord({"fc2.weight": QuantParams.of(q)}))
    add_activation_hook(model.conv2, ActivationPrune(0.1))
    check_round_trip(model, lenet(), LENET_INPUT, tmp_path)
    assert entry(header(tmp_path / "first.ptcz"), "fc2.weight")["q"][:4] == [3, None, 0, 7]
