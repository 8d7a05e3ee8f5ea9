"""Evaluation data read once per session: the batches kept as tensors on the evaluation device.

A DataLoader decodes and transforms its samples each time it is iterated, so a session
with K checks would pay for that K + 1 times. ``materialize`` iterates the data once,
moves every batch to the evaluation device and keeps it; every evaluation of the session
then reuses the same tensors. While it reads, it also hashes the batches (the data's
fingerprint for the persistent cache), so fingerprinting costs no pass of its own.

Data larger than the limit is streamed instead: the batches read so far are dropped as
soon as the limit is passed, and each evaluation iterates the original data again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.batches import to_device
from ..errors import DataError
from .fingerprint import DataDigest

MEGABYTE = 1 << 20


@dataclass(frozen=True)
class EvaluationData:
    """Batches to evaluate on, and what reading them once told us.

    ``batches`` is the kept list, or the original data when ``streamed``. ``nbytes``
    counts the tensor bytes read; when ``counted_all`` is False the reading stopped at
    the limit, so it is only a lower bound. ``fingerprint`` is None when none was asked
    for or when ``unfingerprintable`` says why a batch could not be hashed.
    """

    batches: Iterable[Any]
    streamed: bool
    nbytes: int
    counted_all: bool = True
    fingerprint: str | None = None
    unfingerprintable: str | None = None


def materialize(
    data: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    limit_bytes: int,
    fingerprint: bool = True,
    what: str = "data",
) -> EvaluationData:
    """Read ``data`` once: keep its batches on ``device`` unless they exceed ``limit_bytes``.

    With ``fingerprint`` the batches are hashed on the way (a streamed data set is then
    read to its end, which a rerun served from the cache needs anyway).
    """
    require_reiterable(data, what)
    digest = DataDigest() if fingerprint else None
    kept: list[Any] | None = []
    nbytes = 0
    counted_all = True
    for batch in data:
        if digest is not None:
            digest.update(batch)
        nbytes += tensor_bytes(batch)
        if kept is not None:
            if nbytes > limit_bytes:
                kept = None  # too big to keep: free what was read, stream from now on
            else:
                kept.append(to_device(batch, device))
        if kept is None and digest is None:
            counted_all = False  # nothing more to learn from reading on
            break
    return EvaluationData(
        batches=data if kept is None else kept,
        streamed=kept is None,
        nbytes=nbytes,
        counted_all=counted_all,
        fingerprint=None if digest is None else digest.hexdigest(),
        unfingerprintable=None if digest is None else digest.unfingerprintable,
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` with its index: "cuda" is the current CUDA device, as tensors report it.

    Tensors moved to "cuda" say "cuda:0"; comparing against the bare name would make
    every model look misplaced, and be copied again.
    """
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a batch: tensors, and tensors inside tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def require_reiterable(data: Any, what: str) -> None:
    """``DataError`` for an iterator: it can be read only once, and every check reads it.

    Checked by type, not by calling ``iter``: a DataLoader's ``iter`` starts its workers.
    """
    if not isinstance(data, Iterable):
        raise DataError(
            f"the {what} must be an iterable of batches (a DataLoader or a list), "
            f"got {type(data).__name__}"
        )
    if isinstance(data, Iterator):
        raise DataError(
            f"the {what} is an iterator ({type(data).__name__}), which can be read only once; "
            "give something that can be iterated again, such as a DataLoader or a list of batches"
        )
