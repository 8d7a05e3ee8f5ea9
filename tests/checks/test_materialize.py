"""Evaluation data read once: kept on the device up to a limit, hashed on the way."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pytest_compress.checks.materialize import (
    MEGABYTE,
    materialize,
    require_reiterable,
    resolve_device,
    tensor_bytes,
)


class Counting(Dataset):
    def __init__(self, n: int = 40) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=generator)
        self.y = torch.arange(n)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.x[index], self.y[index]


def test_the_batches_are_read_once_and_kept() -> None:
    dataset = Counting()
    loader = DataLoader(dataset, batch_size=16)
    data = materialize(loader, limit_bytes=MEGABYTE)
    assert dataset.reads == 40 and not data.streamed
    assert isinstance(data.batches, list) and len(data.batches) == 3
    for _ in range(2):
        assert [len(x) for x, _ in data.batches] == [16, 16, 8]
    assert dataset.reads == 40  # iterating the kept batches decodes nothing
    assert data.nbytes == 40 * 3 * 4 + 40 * 8 and data.counted_all
    assert torch.equal(torch.cat([x for x, _ in data.batches]), dataset.x)


def test_data_over_the_limit_is_streamed_from_the_original() -> None:
    dataset = Counting()
    loader = DataLoader(dataset, batch_size=16)
    data = materialize(loader, limit_bytes=500)  # one batch is 16 * 20 = 320 bytes
    assert data.streamed and data.batches is loader
    assert data.nbytes == 40 * 20 and data.counted_all  # read to the end for the fingerprint
    assert data.fingerprint is not None


def test_without_a_fingerprint_streaming_stops_reading_at_the_limit() -> None:
    dataset = Counting()
    data = materialize(DataLoader(dataset, batch_size=16), limit_bytes=500, fingerprint=False)
    assert data.streamed and not data.counted_all and data.fingerprint is None
    assert dataset.reads == 32 and data.nbytes == 640  # the batch that passed the limit


def test_the_fingerprint_follows_every_value_and_the_batching() -> None:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8)

    def fingerprint(batches: list) -> str | None:
        return materialize(batches, limit_bytes=MEGABYTE).fingerprint

    base = fingerprint([(x[:4], y[:4]), (x[4:], y[4:])])
    assert base == fingerprint([(x[:4].clone(), y[:4].clone()), (x[4:].clone(), y[4:])])
    changed = x.clone()
    changed[6, 2] = torch.nextafter(changed[6, 2], torch.tensor(10.0))  # one value, one ulp
    assert fingerprint([(x[:4], y[:4]), (changed[4:], y[4:])]) != base
    assert fingerprint([(x[4:], y[4:]), (x[:4], y[:4])]) != base  # order
    assert fingerprint([(x, y)]) != base  # batching
    assert fingerprint([(x[:4].double(), y[:4]), (x[4:], y[4:])]) != base  # dtype
    assert fingerprint([(x[:4], y[:4])]) != base  # a batch fewer


def test_a_batch_that_cannot_be_hashed_leaves_no_fingerprint_and_says_why() -> None:
    target = torch.zeros(2)
    data = materialize([(target, weakref.ref(target))], limit_bytes=MEGABYTE)
    assert data.fingerprint is None and not data.streamed
    assert data.unfingerprintable == "batch 0 holds a weakref.ReferenceType"


def test_an_iterator_is_refused_before_it_is_consumed() -> None:
    batches = iter([(torch.zeros(1, 2), torch.zeros(1))])
    with pytest.raises(ValueError, match=r"the data is an iterator \(list_iterator\)"):
        materialize(batches, limit_bytes=MEGABYTE)
    assert next(batches) is not None  # nothing was read from it


def test_tensor_bytes_counts_nested_tensors() -> None:
    batch = ({"ids": torch.zeros(4, dtype=torch.int64), "mask": torch.ones(4)}, [torch.zeros(2)])
    assert tensor_bytes(batch) == 32 + 16 + 8
    assert tensor_bytes(("text", 3)) == 0


def test_batches_move_to_the_device_and_cuda_gets_its_index() -> None:
    data = materialize([(torch.zeros(2), torch.zeros(2))], device="meta", limit_bytes=MEGABYTE,
                       fingerprint=False)  # fmt: skip
    assert data.batches[0][0].device.type == "meta"
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").index == torch.cuda.current_device()


def test_the_reiterable_check_does_not_start_an_iteration() -> None:
    class CountsIterations:
        started = 0

        def __iter__(self):
            CountsIterations.started += 1
            return iter([])

    require_reiterable(CountsIterations(), "data")
    assert CountsIterations.started == 0
    with pytest.raises(ValueError, match=r"the data is an iterator \(generator\)"):
        require_reiterable((batch for batch in []), "data")
    with pytest.raises(ValueError, match=r"must be an iterable of batches.*got int"):
        require_reiterable(3, "data")
