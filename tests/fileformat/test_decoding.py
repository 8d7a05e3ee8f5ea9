"""Block-by-block decoding (``decoding.py``) and codes derived once per save: the loaded
values are bit for bit the saved ones for every dtype, layout and scale arrangement, across
block boundaries; no whole-tensor float32 or int64 temporary; the same bytes either way."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_compress.engine.apply import compress_model
from pytest_compress.engine.quant import dequantize, quantize
from pytest_compress.engine.record import CompressionRecord, QuantParams, get_record, set_record
from pytest_compress.engine.specs import PruneSpec, QuantSpec
from pytest_compress.errors import FileFormatError
from pytest_compress.fileformat import checksum, container, decoding
from pytest_compress.fileformat.container import (
    encode_codes,
    load_compressed,
    save_compressed,
)
from pytest_compress.fileformat.encoding import choose_layout

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(
        a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8)
    )


def header(path: Path) -> dict:
    data = path.read_bytes()
    _, _, length, _ = struct.unpack_from("<4sHII", data)
    return json.loads(zlib.decompress(data[14 : 14 + length]))


def layouts(path: Path) -> set[str]:
    return {entry["e"] for entry in header(path)["t"] if "e" in entry}


def by_hand(
    dtype: torch.dtype, *, bits: int, axis: int | None, group: int | None, zeros: float
) -> nn.Module:
    """Weights fake-quantized by hand along any axis (the engine quantizes along axis 0
    only), a share ``zeros`` of them exactly zero, so every layout can be reached."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(50, 24), nn.Conv2d(5, 6, 3)).to(dtype)
    record = {}
    for key, weight in (("0.weight", model[0].weight), ("1.weight", model[1].weight)):
        with torch.no_grad():
            weight.mul_((torch.rand(weight.shape) >= zeros).to(dtype))
            q = quantize(weight.detach(), bits=bits, axis=axis, group_size=group)
            weight.copy_(dequantize(q))
        record[key] = QuantParams.of(q)
    set_record(model, CompressionRecord(quantized=record))
    return model


def round_trip(model: nn.Module, path: Path) -> nn.Module:
    save_compressed(model, path)
    loaded = load_compressed(path, model)
    back = loaded.state_dict()
    assert list(back) == list(model.state_dict())
    for key, saved in model.state_dict().items():
        assert same_bits(saved, back[key]), key
    return loaded


@pytest.fixture(params=[7, 1 << 18], ids=lambda block: f"block{block}")
def block(request, monkeypatch) -> int:
    """Tiny blocks split runs and rows at odd places; the default keeps them whole."""
    monkeypatch.setattr(decoding, "BLOCK", request.param)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES[:3], ids=str)
@pytest.mark.parametrize(
    ("axis", "group"), [(None, None), (0, None), (1, None), (0, 5), (0, 10), (1, 4)]
)
@pytest.mark.parametrize("zeros", [0.0, 0.6, 0.98])
@pytest.mark.parametrize("bits", [3, 8, 12])
def test_quantized_values_come_back_exactly(
    dtype, axis, group, zeros, bits, block, tmp_path: Path
) -> None:
    model = by_hand(dtype, bits=bits, axis=axis, group=group, zeros=zeros)
    path = tmp_path / "m.ptcz"
    loaded = round_trip(model, path)
    # the record comes back too, so the copy saves to the same bytes
    assert get_record(loaded).quantized.keys() == get_record(model).quantized.keys()
    again = tmp_path / "again.ptcz"
    save_compressed(loaded, again)
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_values_at_the_edge_of_the_dtype_saturate_as_they_were_saved(dtype, tmp_path) -> None:
    """The grid's last point past the dtype's largest value is saturated there on load
    too (the clamp ``quant._values`` applies, which the decoder skips only when no value
    can reach that far)."""
    largest = torch.finfo(dtype).max
    model = nn.Linear(16, 8, bias=False).to(dtype)
    with torch.no_grad():
        edge = torch.linspace(-largest, largest * 0.999, 128, dtype=torch.float64)
        model.weight.copy_(edge.reshape(8, 16))
    packed = compress_model(model, quantize=QuantSpec(bits=3, per_channel=False))
    assert packed.weight.abs().max() == largest  # saturated when it was quantized
    round_trip(packed, tmp_path / "m.ptcz")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_layout_is_reached_and_decoded(dtype, block, tmp_path: Path) -> None:
    seen: set[str] = set()
    for zeros in (0.0, 0.6, 0.98):
        path = tmp_path / f"{zeros}.ptcz"
        round_trip(by_hand(dtype, bits=8, axis=0, group=None, zeros=zeros), path)
        seen |= layouts(path)
    assert seen == {"dense", "mask", "gaps"}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(format="fp16"),
        QuantSpec(format="bf16"),
        QuantSpec(format="fp8"),
        QuantSpec(format="fp8", per_channel=False),
        QuantSpec(format="fp8-e5m2"),
    ],
    ids=["fp16", "bf16", "fp8", "fp8-per-tensor", "fp8-e5m2"],
)
@pytest.mark.parametrize("prune", [None, 0.9])
def test_float_formats_come_back_exactly(dtype, spec, prune, block, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 7)).to(dtype)
    pruning = None if prune is None else PruneSpec(amount=prune)
    round_trip(compress_model(model, quantize=spec, prune=pruning), tmp_path / "m.ptcz")


@pytest.mark.parametrize("dtype", [*DTYPES, torch.int64, torch.bool, torch.complex64], ids=str)
@pytest.mark.parametrize("zeros", [0.0, 0.7, 0.99])
def test_raw_tensors_come_back_exactly(dtype, zeros, block, tmp_path: Path) -> None:
    torch.manual_seed(3)
    values = torch.where(torch.rand(37, 29) >= zeros, torch.randn(37, 29).mul(10), 0.0)
    model = nn.Module()
    model.register_buffer("values", values.to(dtype))
    round_trip(model, tmp_path / "m.ptcz")


def test_a_negative_zero_left_out_comes_back_as_positive_zero(block, tmp_path: Path) -> None:
    model = nn.Module()
    model.register_buffer("zeros", torch.tensor([-0.0] * 30 + [1.0]))
    path = tmp_path / "m.ptcz"
    save_compressed(model, path)
    assert layouts(path) == {"gaps"}
    assert same_bits(load_compressed(path, model).zeros, torch.tensor([0.0] * 30 + [1.0]))


def test_a_non_contiguous_parameter_is_filled_through_load_state_dict(tmp_path: Path) -> None:
    model = nn.Linear(8, 6)
    model.weight = nn.Parameter(torch.randn(8, 6).t())  # a transposed view: strided
    round_trip(compress_model(model, quantize="int8"), tmp_path / "m.ptcz")


class KeepsItsBias(nn.Linear):
    """A module whose custom loading keeps its own bias, whatever the state says."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kept = {key: value for key, value in state_dict.items() if key != prefix + "bias"}
        super()._load_from_state_dict(kept, prefix, *args, **kwargs)
        args[2].remove(prefix + "bias")  # missing keys: this one is missing on purpose


def test_a_module_with_custom_loading_keeps_what_it_keeps(tmp_path: Path) -> None:
    model = KeepsItsBias(4, 3)
    path = tmp_path / "m.ptcz"
    save_compressed(model, path)
    with torch.no_grad():
        model.bias.fill_(7.0)  # the loaded copy keeps this, not the file's bias
    loaded = load_compressed(path, model)
    assert torch.equal(loaded.bias, torch.full((3,), 7.0))


class Sizes(TorchDispatchMode):
    """The largest tensor each dtype's operations produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest: dict[torch.dtype, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest[t.dtype] = max(self.largest.get(t.dtype, 0), t.numel())
        return out


@pytest.mark.parametrize("prune", [None, 0.5, 0.97], ids=["dense", "mask", "gaps"])
def test_a_bf16_load_makes_no_whole_tensor_temporary(prune, tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = nn.Linear(2048, 4096, bias=False).to(torch.bfloat16)  # 16 MB
    pruning = None if prune is None else PruneSpec(amount=prune)
    path = tmp_path / "m.ptcz"
    save_compressed(compress_model(model, quantize="int8", prune=pruning), path)
    numel = model.weight.numel()
    blob = path.stat().st_size
    sizes = Sizes()
    with sizes:
        load_compressed(path, model)
    tracemalloc.start()  # apart: the dispatch mode allocates through Python itself
    try:
        loaded = load_compressed(path, model)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # torch: the bfloat16 weight itself, and float32 blocks a fraction of it
    assert sizes.largest.get(torch.bfloat16) == numel
    wide = [torch.float32, torch.float64, torch.int32, torch.int64]
    assert max(sizes.largest.get(dtype, 0) for dtype in wide) <= 2 * decoding.BLOCK
    # numpy: the blob read from the file, and a few int64 arrays of a block (positions,
    # their scales), far from a whole-tensor int64 (64 MB) or float32 (32 MB) array
    assert numpy_peak < blob + 5 * 8 * decoding.BLOCK, (numpy_peak, blob)
    assert loaded.weight.dtype == torch.bfloat16


def test_a_corrupted_blob_fails_its_checksum_whatever_it_decodes_to(tmp_path: Path) -> None:
    torch.manual_seed(5)
    path = tmp_path / "m.ptcz"
    model = compress_model(nn.Linear(16, 8), quantize=QuantSpec(format="fp8"))
    save_compressed(model, path)
    data = bytearray(path.read_bytes())
    data[-40] = 0x7F  # an fp8-e4m3 NaN in the weight's elements
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="checksum mismatch"):
        load_compressed(path, model)
    crc = zlib.crc32(bytes(data[14:]))
    path.write_bytes(bytes(data[:10]) + struct.pack("<I", crc) + bytes(data[14:]))
    with pytest.raises(FileFormatError, match="must be finite"):
        load_compressed(path, model)


@pytest.mark.parametrize("spec", ["int8", "int4", "int4-g16"])
def test_known_codes_encode_to_the_same_entry_and_blob(spec) -> None:
    torch.manual_seed(6)
    model = compress_model(nn.Linear(64, 12), quantize=spec, prune=PruneSpec(amount=0.5))
    params = get_record(model).quantized["weight"]
    assert isinstance(params, QuantParams)
    weight = model.weight.detach()
    derived = container._encode_quantized("weight", weight, params, None)
    codes = params.stored_codes(weight, "weight")
    known = encode_codes("weight", codes, params, weight.dtype, tuple(weight.shape))
    assert known[0] == derived[0]
    assert b"".join(known[1].parts()) == b"".join(derived[1].parts())


@pytest.mark.parametrize("room", [container.CODE_CACHE_BYTES, 0], ids=["kept", "derived twice"])
def test_a_save_derives_each_tensors_codes_once(room, monkeypatch, tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = compress_model(nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 4)), quantize="int4")
    reference = tmp_path / "reference.ptcz"
    save_compressed(model, reference)
    calls: list[str] = []
    original = QuantParams.stored_codes

    def counted(self, values, name, *, check=True):  # type: ignore[no-untyped-def]
        calls.append(name)
        return original(self, values, name, check=check)

    monkeypatch.setattr(QuantParams, "stored_codes", counted)
    monkeypatch.setattr(container, "CODE_CACHE_BYTES", room)
    path = tmp_path / "m.ptcz"
    save_compressed(model, path)
    assert sorted(calls) == sorted(["0.weight", "1.weight"] * (1 if room else 2))
    assert path.read_bytes() == reference.read_bytes()


def test_runs_and_positions_find_the_same_scales() -> None:
    """The run layout's scale per run agrees with the per-position lookup."""
    for shape, axis, group in [((6, 8), 0, 4), ((6, 8), 0, None), ((3, 4, 5), 1, None)]:
        scales = decoding.Scales.of(shape, axis, group)
        assert scales.run is not None
        positions = np.arange(scales.numel)
        runs = np.repeat(np.arange(scales.numel // scales.run) % scales.count, scales.run)
        assert np.array_equal(scales.index(positions), runs)


@pytest.mark.parametrize("zeros", [0.6, 0.97])
def test_channels_along_the_last_axis_get_the_smallest_layout(zeros, tmp_path: Path) -> None:
    """One zero point per element of a row (channels along the last axis): the encoder
    compares each element with its own channel's zero point (once an (n, n) matrix, which
    always chose dense and held chunk x chunk flags)."""
    model = by_hand(torch.float32, bits=8, axis=1, group=None, zeros=zeros)
    path = tmp_path / "m.ptcz"
    round_trip(model, path)
    params = get_record(model).quantized["0.weight"]
    assert isinstance(params, QuantParams)
    codes = params.stored_codes(model[0].weight.detach(), "0.weight")
    nonzero = codes != (params.zero_point - params.qmin).reshape(1, -1)
    expected = choose_layout(nonzero.numpy(), 8)
    entry = next(e for e in header(path)["t"] if e["k"] == "0.weight")
    assert entry["e"] == expected.name != "dense"


def test_the_running_crc_is_zlibs_over_the_blobs_in_order_threaded_or_not() -> None:
    rng = np.random.default_rng(7)
    blobs = [rng.integers(0, 256, size, dtype=np.uint8) for size in (10, 3 << 20, 5, 2 << 20)]
    with checksum.RunningCrc(1234) as crc:
        for blob in blobs:
            crc.add(blob.data)
        assert crc.value == zlib.crc32(b"".join(blob.tobytes() for blob in blobs), 1234)


@pytest.mark.parametrize("where", ["first", "last"])
def test_a_flipped_byte_in_a_blob_checksummed_on_the_worker_fails_the_load(
    tmp_path: Path, where: str
) -> None:
    """Blobs past ``THREADED_BYTES`` are checksummed beside their decoding; a flip in the
    first (more blobs follow) or the last one (the check at the end) still fails."""
    torch.manual_seed(8)
    float_model = nn.Sequential(nn.Linear(1024, 2048), nn.Linear(2048, 1024))
    model = compress_model(float_model, quantize="int8")
    path = tmp_path / "m.ptcz"
    save_compressed(model, path)
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * checksum.THREADED_BYTES
    _, header_len, _ = struct.unpack("<HII", bytes(data[4:14]))
    flip = 14 + header_len + 4096 if where == "first" else len(data) - 4096
    data[flip] ^= 0x01  # a code off by one: decodes fine, only the CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="checksum mismatch"):
        load_compressed(path, model)


@pytest.mark.parametrize("recipe", [{"prune": 0.9}, {"prune": 0.8, "quantize": "int4"}])
def test_gaps_kept_from_the_plan_write_the_same_file(tmp_path: Path, monkeypatch, recipe) -> None:
    """A save keeps a gaps layout's gaps from planning for writing (within the code
    cache's budget); the file is byte for byte the one written without them."""
    from pytest_compress.fileformat import stream

    torch.manual_seed(9)
    model = compress_model(nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 50)), **recipe)
    monkeypatch.setattr(stream, "CHUNK", 997)  # many chunks, gaps across their edges
    planned = []
    real = stream.plan

    def recording(source, budget=0):
        planned.append(real(source, budget))
        return planned[-1]

    monkeypatch.setattr(container, "stream_plan", recording)
    save_compressed(model, tmp_path / "kept.ptcz")
    assert any(plan.entries is not None for plan in planned)
    monkeypatch.setattr(container, "CODE_CACHE_BYTES", 0)
    planned.clear()
    save_compressed(model, tmp_path / "found.ptcz")
    assert all(plan.entries is None for plan in planned)
    assert (tmp_path / "kept.ptcz").read_bytes() == (tmp_path / "found.ptcz").read_bytes()
    loaded = load_compressed(tmp_path / "kept.ptcz", model).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
