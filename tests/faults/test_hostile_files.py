"""Hostile files: a crafted file costs what its size says, and is refused as a FileFormatError.

Each file below is made from a genuine one by rewriting its JSON header and fixing the
CRC, so it passes every check that looks at the bytes alone. The load attempt runs in a
fresh process, which reports its time and how far its peak memory (``ru_maxrss``) grew.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_compress.engine.apply import compress_model
from pytest_compress.errors import FileFormatError, ModelError
from pytest_compress.fileformat.container import (
    FORMAT_VERSION,
    load_compressed,
    save_compressed,
)

PREFIX = struct.Struct("<4sHII")
MAX_SECONDS = 5.0
MAX_GROWTH_MB = 100


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def genuine(path: Path) -> tuple[dict, bytes]:
    """A genuine int8 file's header document and data section."""
    save_compressed(compress_model(build(), quantize="int8"), path)
    raw = path.read_bytes()
    _, _, header_len, _ = PREFIX.unpack_from(raw)
    header = zlib.decompress(raw[PREFIX.size : PREFIX.size + header_len])
    return json.loads(header), raw[PREFIX.size + header_len :]


def write(path: Path, header_text: str, data: bytes) -> Path:
    """A file with this header and data, and a CRC that matches them."""
    header = zlib.compress(header_text.encode("utf-8"), 9)
    crc = zlib.crc32(data, zlib.crc32(header))
    path.write_bytes(PREFIX.pack(b"PTCZ", FORMAT_VERSION, len(header), crc) + header + data)
    return path


def many_dimensions(tmp_path: Path) -> Path:
    """A quantized weight whose scale shape has 200,000 dimensions (still 8 scales)."""
    doc, data = genuine(tmp_path / "genuine.ptc")
    entry = next(e for e in doc["t"] if "q" in e)
    channels = entry["q"][5][0]
    entry["q"][5] = [channels] + [1] * 200_000
    return write(tmp_path / "dimensions.ptc", json.dumps(doc), data)


def nested_objects(tmp_path: Path) -> Path:
    """A header of some 60 MB of empty objects, under 100 kB once compressed."""
    doc, data = genuine(tmp_path / "genuine.ptc")
    text = json.dumps(doc)[:-1] + ',"x":[' + ",".join(["{}"] * 20_000_000) + "]}"
    return write(tmp_path / "nested.ptc", text, data)


LOAD = """
import json, resource, sys, time
import torch
from torch import nn
from pytest_compress.errors import FileFormatError, ModelError
from pytest_compress.fileformat.container import load_compressed

torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_compressed(sys.argv[1], model)
    raised, message = None, ""
except Exception as error:
    raised, message = type(error).__name__, str(error)
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"raised": raised, "message": message[:300], "seconds": seconds,
                  "growth_mb": (after - before) / 1024}))
"""


def load_in_a_fresh_process(path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOAD), str(path)],
        capture_output=True,
        text=True,
        timeout=60,  # the many dimensions took 115 s before they were bounded
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("craft", [many_dimensions, nested_objects])
def test_a_crafted_header_is_refused_quickly_in_little_memory(tmp_path, craft):
    path = craft(tmp_path)
    assert path.stat().st_size < 200_000
    outcome = load_in_a_fresh_process(path)
    assert outcome["raised"] == "FileFormatError", outcome
    assert str(path) in outcome["message"]
    assert outcome["seconds"] < MAX_SECONDS, outcome
    assert outcome["growth_mb"] < MAX_GROWTH_MB, outcome


def within_bounds_many_dimensions(doc: dict) -> str:
    entry = next(e for e in doc["t"] if "q" in e)
    entry["q"][5] = [entry["q"][5][0]] + [1] * 1000  # within the header's length bound
    return json.dumps(doc)


def within_bounds_many_objects(doc: dict) -> str:
    doc["t"].extend({} for _ in range(30))  # refused while parsing, before any entry is read
    return json.dumps(doc)


def within_bounds_infinity(doc: dict) -> str:
    doc["h"].append(["0", "prune", float("inf")])
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("craft", "message"),
    [
        (within_bounds_many_dimensions, "at most 8 dimensions"),
        (within_bounds_many_objects, "more than 24 objects"),
        (within_bounds_infinity, "Infinity, which is not a JSON number"),
    ],
    ids=["dimensions", "objects", "infinity"],
)
def test_a_crafted_header_within_the_length_bound_is_refused(tmp_path, craft, message):
    doc, data = genuine(tmp_path / "genuine.ptc")
    path = write(tmp_path / "crafted.ptc", craft(doc), data)
    with pytest.raises(FileFormatError, match=f"crafted.ptc: .*{message}"):
        load_compressed(path, build())


def test_a_file_loads_into_a_model_on_the_meta_device(tmp_path):
    small = compress_model(build(), quantize="int8")
    save_compressed(small, tmp_path / "small.ptc")
    with torch.device("meta"):
        skeleton = build()
    loaded = load_compressed(tmp_path / "small.ptc", skeleton)
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert all(t.device.type == "cpu" for t in tensors)
    x = torch.randn(5, 16)
    assert torch.equal(loaded(x), small(x))
    assert all(t.device.type == "meta" for t in skeleton.parameters())  # left as it was


def test_a_meta_model_with_state_outside_the_file_is_refused(tmp_path):
    save_compressed(compress_model(build(), quantize="int8"), tmp_path / "small.ptc")
    with torch.device("meta"):
        skeleton = build()
    skeleton[1].register_buffer("table", torch.zeros(3, device="meta"), persistent=False)
    with pytest.raises(FileFormatError, match=r"small\.ptc.*meta device.*1\.table"):
        load_compressed(tmp_path / "small.ptc", skeleton)


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    model = build()
    model.register_buffer("wide", torch.zeros([1] * 9))
    with pytest.raises(ModelError, match="9 dimensions; at most 8"):
        save_compressed(model, tmp_path / "wide.ptc")
    assert not (tmp_path / "wide.ptc").exists()
