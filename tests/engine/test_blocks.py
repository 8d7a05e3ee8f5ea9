"""Block-by-block passes (quantization, the pruning cut, the encoder) equal whole-tensor ones,
and a bfloat16 weight is never widened whole: counted, not timed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import pytest_compress.engine.magnitudes as magnitudes
import pytest_compress.engine.quant as quant
import pytest_compress.fileformat.stream as stream
from pytest_compress import compress_model, compressed_size, save_compressed
from pytest_compress.engine.prune import global_magnitude_masks, magnitude_mask
from pytest_compress.engine.quant import dequantize, fake_quantize, quantize
from pytest_compress.engine.specs import PruneSpec, QuantSpec

CASES = [
    ((40, 30), 0, None),
    ((40, 30), None, None),
    ((6, 5, 3, 3), 0, None),
    ((5, 6, 3, 3), 1, None),
    ((40, 30), 0, 8),
    ((40, 30), 0, 7),
    ((6, 5, 3, 3), 0, 4),
]


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks, samples and chunks of a few elements: every path splits many times."""
    monkeypatch.setattr(quant, "BLOCK_ELEMENTS", 13)
    monkeypatch.setattr(magnitudes, "BLOCK_ELEMENTS", 13)
    monkeypatch.setattr(magnitudes, "SAMPLE", 4)
    monkeypatch.setattr(stream, "CHUNK", 11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("shape", "axis", "group"), CASES)
def test_quantization_in_blocks_equals_the_whole(
    monkeypatch: pytest.MonkeyPatch, shape: tuple, axis: int | None, group: int | None, dtype
) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    kwargs = dict(bits=4, axis=axis, group_size=group)
    whole_q, whole_f = quantize(x, **kwargs), fake_quantize(x, **kwargs)
    monkeypatch.setattr(quant, "BLOCK_ELEMENTS", 7)
    q = quantize(x, **kwargs)
    assert torch.equal(q.codes, whole_q.codes)
    assert torch.equal(fake_quantize(x, **kwargs), whole_f)
    assert torch.equal(dequantize(q), whole_f)


def _reference_keep(weights: list[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """The documented rule: prune the k smallest |w|, ties in concatenation order."""
    flat = torch.cat([w.reshape(-1).abs().double() for w in weights])
    k = round(amount * flat.numel())
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return [
        part.view(w.shape)
        for part, w in zip(keep.split([w.numel() for w in weights]), weights, strict=True)
    ]


@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "periodic", "bf16"])
@pytest.mark.parametrize("amount", [0.1, 0.5, 0.8, 0.97])
def test_the_cut_in_blocks_prunes_exactly_the_k_smallest(
    tiny_blocks: None, kind: str, amount: float
) -> None:
    g = torch.Generator().manual_seed(2)
    shapes = [(30, 20), (17,), (25, 9)]
    if kind == "random":
        weights = [torch.randn(s, generator=g) for s in shapes]
    elif kind == "ties":
        weights = [torch.randint(-4, 5, s, generator=g).float() / 8 for s in shapes]
    elif kind == "zeros":
        weights = [torch.randn(s, generator=g) * (torch.rand(s, generator=g) > 0.6) for s in shapes]
    elif kind == "periodic":  # a strided sample sees one phase only: the fallback answers
        weights = [
            torch.arange(torch.Size(s).numel()).float().remainder(64).reshape(s) for s in shapes
        ]
    else:
        weights = [torch.randn(s, generator=g).to(torch.bfloat16) for s in shapes]
    expected = _reference_keep(weights, amount)
    got = global_magnitude_masks(weights, amount)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert torch.equal(magnitude_mask(weights[0], amount), _reference_keep(weights[:1], amount)[0])


def test_the_bisection_fallback_is_exact() -> None:
    g = torch.Generator().manual_seed(3)
    weights = [torch.randn(500, generator=g), torch.randint(0, 3, (300,), generator=g).float()]
    values = torch.cat([w.abs() for w in weights])
    for k in (1, 17, 300, 650, 800):
        assert magnitudes._bisect(weights, k, torch.float32) == float(
            torch.kthvalue(values, k).values
        )


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 7)).to(dtype)


@pytest.mark.parametrize(
    "recipe",
    [
        {"quantize": "int4"},
        {"quantize": QuantSpec(bits=3, group_size=16, allow_short_rows=True)},
        {"prune": PruneSpec(amount=0.8, scope="global"), "quantize": "int8"},
        {"prune": 0.9},
        {"prune": 0.7, "quantize": "fp8-e4m3"},
    ],
)
def test_chunked_files_are_byte_identical_and_sized_exactly(
    tmp_path, monkeypatch: pytest.MonkeyPatch, recipe: dict
) -> None:
    compressed = compress_model(_model(), **recipe)
    whole = tmp_path / "whole.ptcz"
    save_compressed(compressed, whole)
    monkeypatch.setattr(stream, "CHUNK", 11)
    monkeypatch.setattr(quant, "BLOCK_ELEMENTS", 13)
    chunked = tmp_path / "chunked.ptcz"
    written = save_compressed(compressed, chunked)
    assert chunked.read_bytes() == whole.read_bytes()
    assert written == compressed_size(compressed) == len(whole.read_bytes())


class _Widening(TorchDispatchMode):
    """Records the largest float32 tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(
    "recipe",
    [{"quantize": "int8"}, {"prune": PruneSpec(amount=0.8, scope="global"), "quantize": "int4"}],
)
def test_a_bf16_weight_is_never_widened_whole(
    monkeypatch: pytest.MonkeyPatch, recipe: dict
) -> None:
    monkeypatch.setattr(quant, "BLOCK_ELEMENTS", 1024)
    monkeypatch.setattr(magnitudes, "BLOCK_ELEMENTS", 1024)
    # The pruning cut widens the magnitudes inside its sample's bracket (about 17 % of
    # them with a 1024-element sample here, about 2 % with the real 65536), nothing whole.
    monkeypatch.setattr(magnitudes, "SAMPLE", 1024)
    model = nn.Sequential(nn.Linear(256, 256)).to(torch.bfloat16)
    with _Widening() as seen:
        compressed = compress_model(model, **recipe)
        compressed_size(compressed)
    assert 0 < seen.largest <= model[0].weight.numel() // 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zeroing_by_integer_mask_is_masked_fill_bit_for_bit(dtype: torch.dtype) -> None:
    # +0.0 where pruned; every kept element's bits untouched, a -0.0 and a NaN included
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    values[::7], values[3] = -0.0, float("nan")
    values = values.to(dtype)
    keep = torch.rand(1000, generator=torch.Generator().manual_seed(1)) > 0.5
    fast, slow = values.clone(), values.clone()
    magnitudes.zero_unkept_(fast, keep)
    slow.masked_fill_(~keep, 0.0)
    integers = magnitudes._BIT_VIEWS[values.element_size()]
    assert torch.equal(fast.view(integers), slow.view(integers))


def test_one_cut_over_many_tensors_reads_them_through_one_buffer(
    tiny_blocks: None, monkeypatch
) -> None:
    """The bracket pass reads every block of every tensor into one buffer (a fresh one per
    block or tensor leaves holes the kept elements settle in: 0.9x the model's bytes)."""
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(s, generator=g) for s in [(40, 30), (31,), (25, 19), (64, 8)]]
    blocks: list[int] = []
    given: list[torch.Tensor | None] = []
    real = magnitudes.magnitude_blocks

    def recording(weight, dtype, buffer=None):
        given.append(buffer)
        for start, block in real(weight, dtype, buffer):
            blocks.append(block.untyped_storage().data_ptr())
            yield start, block

    monkeypatch.setattr(magnitudes, "magnitude_blocks", recording)
    k = 700
    value, counts = magnitudes.kth_smallest(weights, k, torch.float32)
    assert value == float(
        torch.kthvalue(torch.cat([w.abs().reshape(-1) for w in weights]), k).values
    )
    assert counts is not None  # the bracket held the cut: no fallback pass
    assert len(blocks) > len(weights) and len(set(blocks)) == 1
    assert len(given) == len(weights) and all(buffer is given[0] for buffer in given)
    assert given[0] is not None
