"""What a real runtime hands back: a callable artifact with the honest size of its files."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..units import format_size


@dataclass(frozen=True)
class Deployed:
    """A compressed model as a runtime deploys it.

    - ``predict(inputs)``: run the artifact on a batch's inputs (a tensor, a tuple of
      positional tensors, or a dict of named tensors); returns torch tensors (one tensor,
      or a tuple of them for a graph with several outputs).
    - ``size_bytes``: the bytes of ``files``, the files that load back into this artifact.
    - ``saved_as``: how it was saved, in words, for reports.
    - ``path``: the main file (``files[0]``).
    - ``kept_float``: compressible layers the runtime left in float, by module name.
    """

    runtime: str
    predict: Callable[[Any], Any]
    files: tuple[Path, ...]
    size_bytes: int
    saved_as: str
    kept_float: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return self.files[0]


@dataclass(frozen=True)
class Compressed:
    """What a ``compressor=`` fixture's callable may return for an artifact that is not a
    torch module: an ONNX file built by the team's own pipeline, a TensorRT engine, a
    ``torch.export`` program.

    - ``predict(inputs)``: runs the artifact on a batch's inputs (as the batches give them:
      a tensor, a tuple, a dict) and returns its outputs as torch tensors.
    - ``path``: the file(s) that load back into the artifact; their bytes are its size.
    """

    predict: Callable[[Any], Any]
    path: str | os.PathLike | tuple[str | os.PathLike, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        paths = self.path if isinstance(self.path, tuple) else (self.path,)
        return tuple(Path(p) for p in paths)


def files_size(files: tuple[Path, ...]) -> int:
    """The bytes the files take, as ``os.stat`` reports them."""
    return sum(os.stat(path).st_size for path in files)


def size_words(files: tuple[Path, ...], what: str) -> str:
    """``"ONNX file 12.3 kB"``, or ``"... 12.3 kB with external data (2 files)"``."""
    total = format_size(files_size(files))
    extra = f" with external data ({len(files)} files)" if len(files) > 1 else ""
    return f"{what} {total}{extra}"
