"""Caches: one within a session (by fixture and object identity), one across sessions.

``IdentityMemo`` keeps a value per key for as long as the key's objects are the very
same objects: the float model's measurements, materialised data and fingerprints are
computed once per session per fixture.

``ResultCache`` keeps measurements across sessions in a key-value store with the API of
pytest's ``config.cache`` (``get(key, default)`` / ``set(key, value)``; the plugin passes
it in, so ``-p no:cacheprovider`` turns this cache off). One small JSON entry per key:
the float model's metric and size under a reference key, each check's measurements
under a check key, and a failing check's per-layer sensitivity (a JSON document the
caller reads back, ``SensitivityResult.from_dict``) under its check key plus the
sensitivity's own settings. A key is a fingerprint of everything its numbers depend on, so a
changed weight, data value, metric, recipe, device or version simply finds no entry. Each
entry carries a ``checksum`` of its key and numbers: an entry that cannot be read, has the
wrong shape or does not match its checksum (a digit changed, an ``Infinity`` written in)
counts as missing, so it is measured again and rewritten, never served.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from typing import Any, Protocol, TypeVar

KEY_PREFIX = "pytest-compress/v1"
CHECKSUM = "checksum"
T = TypeVar("T")
# The entries the persistent cache stores.
Entry = TypeVar("Entry", "ReferenceEntry", "CheckEntry", "DeployedEntry")


class IdentityMemo:
    """Values by key, valid while the key's objects are the very same objects.

    Keys name fixtures; the identity check makes a function-scoped fixture (a new object
    per test) compute afresh instead of reusing a value of another object. One entry per
    key, so a stream of new objects under one name holds on to one of them only.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[tuple[Any, ...], Any]] = {}

    def get(
        self, key: Hashable, objects: tuple[Any, ...], compute: Callable[[], T]
    ) -> tuple[T, bool]:
        """The value for ``key`` (and True), or a freshly computed one (and False)."""
        entry = self._entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], objects, strict=True)):
            return entry[1], True
        value = compute()
        self._entries[key] = (objects, value)
        return value, False


class Store(Protocol):
    """What ``ResultCache`` needs of pytest's ``config.cache``."""

    def get(self, key: str, default: Any) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class ReferenceEntry:
    """The float model's measurements."""

    metric: float
    size: int


@dataclass(frozen=True)
class CheckEntry:
    """One check's measurements, with the float model's, so a hit needs nothing else;
    ``compressed_size`` is ``UNSIZED`` for a search trial that failed with no budget on
    its size (``runner.trial``)."""

    float_metric: float
    float_size: int
    compressed_metric: float
    compressed_size: int
    sparsity: float

    @property
    def sized(self) -> bool:
        return self.compressed_size != UNSIZED


UNSIZED = -1  # a size left unmeasured


@dataclass(frozen=True)
class DeployedEntry:
    """A recipe deployed on a runtime: its metric, the bytes of its artifact, and how it
    was saved (the simulation of the same recipe is a ``CheckEntry`` of its own)."""

    metric: float
    size: int
    saved_as: str
    sparsity: float  # NaN for an artifact whose weights cannot be read


@dataclass(frozen=True)
class CheckKeys:
    """The persistent keys of one check: its float reference and the check itself."""

    reference: str
    check: str


def check_keys(
    *,
    model: str,
    data: str,
    metric: str,
    device: str,
    environment: str,
    recipe: str,
    calibration: str | None,
) -> CheckKeys:
    """Keys from the fingerprints: the reference's of model, data, metric, device and versions;
    the check's of those plus the recipe (and the calibration data, for recipes that use it).
    """
    reference = combine("reference", model, data, metric, device, environment)
    return CheckKeys(reference, combine("check", reference, recipe, calibration))


def combine(*parts: str | None) -> str:
    """One digest of several fingerprints (or plain strings), in order."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        text = repr(part).encode("utf-8")
        digest.update(len(text).to_bytes(8, "little") + text)  # lengths: no ambiguous joins
    return digest.hexdigest()


class ResultCache:
    """Reference and check entries in a ``Store``.

    A check entry written by this object is not read back by it: the cache serves what
    earlier sessions measured, and a check repeated within a session is measured again,
    as it would be without the cache. With ``read=False`` nothing is read at all, and
    what is measured still replaces what was stored (``--compress-no-cache``: the way to
    refresh entries after a change no fingerprint can see).
    """

    def __init__(self, store: Store, *, read: bool = True) -> None:
        self._store = store
        self._read = read
        self._written: set[str] = set()

    def reference(self, key: str) -> ReferenceEntry | None:
        if not self._read:
            return None
        return self._get(f"{KEY_PREFIX}/reference/{key}", ReferenceEntry)

    def put_reference(self, key: str, entry: ReferenceEntry) -> None:
        self._put(f"{KEY_PREFIX}/reference/{key}", entry)

    def check(self, key: str) -> CheckEntry | None:
        if not self._read or key in self._written:
            return None
        return self._get(f"{KEY_PREFIX}/check/{key}", CheckEntry)

    def put_check(self, key: str, entry: CheckEntry) -> None:
        self._put(f"{KEY_PREFIX}/check/{key}", entry)
        self._written.add(key)

    def deployed(self, key: str) -> DeployedEntry | None:
        if not self._read or f"deployed/{key}" in self._written:
            return None
        return self._get(f"{KEY_PREFIX}/deployed/{key}", DeployedEntry)

    def put_deployed(self, key: str, entry: DeployedEntry) -> None:
        self._put(f"{KEY_PREFIX}/deployed/{key}", entry)
        self._written.add(f"deployed/{key}")

    def sensitivity(self, key: str) -> dict[str, Any] | None:
        """A stored sensitivity document, checksum verified (its shape is the caller's to check)."""
        if not self._read or f"sensitivity/{key}" in self._written:
            return None
        full = f"{KEY_PREFIX}/sensitivity/{key}"
        value = self._store.get(full, None)
        if not isinstance(value, dict) or not isinstance(value.get("document"), dict):
            return None
        if value.get(CHECKSUM) != checksum(full, value["document"]):
            return None
        document: dict[str, Any] = value["document"]
        return document

    def put_sensitivity(self, key: str, document: dict[str, Any]) -> None:
        full = f"{KEY_PREFIX}/sensitivity/{key}"
        self._store.set(full, {"document": document, CHECKSUM: checksum(full, document)})
        self._written.add(f"sensitivity/{key}")

    def _get(self, key: str, kind: type[Entry]) -> Entry | None:
        value = self._store.get(key, None)
        if not isinstance(value, dict):
            return None
        content = {name: item for name, item in value.items() if name != CHECKSUM}
        if value.get(CHECKSUM) != checksum(key, content):
            return None
        return _read(content, kind)

    def _put(self, key: str, entry: ReferenceEntry | CheckEntry | DeployedEntry) -> None:
        content = asdict(entry)
        self._store.set(key, {**content, CHECKSUM: checksum(key, content)})


def checksum(key: str, content: dict[str, Any]) -> str:
    """A digest of an entry's key and content, as JSON writes them (``Infinity`` included)."""
    try:
        text = json.dumps([key, content], sort_keys=True)
    except (TypeError, ValueError):
        return ""  # not JSON's: no checksum matches it
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _read(value: Any, kind: type[Entry]) -> Entry | None:
    """The entry, or None when ``value`` is not exactly its fields with numbers of their types."""
    names = [f.name for f in fields(kind)]
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        return None
    for f in fields(kind):
        item = value[f.name]
        if isinstance(item, bool):
            return None
        if f.type == "str":
            if not isinstance(item, str):
                return None
        elif f.type == "int":
            unsized = kind is CheckEntry and f.name == "compressed_size" and item == UNSIZED
            if not isinstance(item, int) or (item < 0 and not unsized):
                return None
        elif not isinstance(item, (int, float)) or (
            f.name == "sparsity"
            and not (math.isfinite(item) and 0 <= item <= 1)
            and not (kind is DeployedEntry and math.isnan(item))
        ):
            return None
    # JSON writes 1.0 as 1.0, but a hand-edited entry may say 1: keep the declared types
    typed: dict[str, Any] = {
        f.name: float(value[f.name]) if f.type == "float" else value[f.name] for f in fields(kind)
    }
    return kind(**typed)


@dataclass(frozen=True)
class CheckStore:
    """One check's entries in a ``ResultCache``: its float reference and its own numbers."""

    cache: ResultCache
    keys: CheckKeys

    def reference(self) -> ReferenceEntry | None:
        return self.cache.reference(self.keys.reference)

    def put_reference(self, entry: ReferenceEntry) -> None:
        self.cache.put_reference(self.keys.reference, entry)

    def check(self) -> CheckEntry | None:
        return self.cache.check(self.keys.check)

    def put_check(self, entry: CheckEntry) -> None:
        self.cache.put_check(self.keys.check, entry)

    def deployed(self, runtime: str) -> DeployedEntry | None:
        return self.cache.deployed(combine(self.keys.check, runtime, runtime_versions(runtime)))

    def put_deployed(self, runtime: str, entry: DeployedEntry) -> None:
        key = combine(self.keys.check, runtime, runtime_versions(runtime))
        self.cache.put_deployed(key, entry)

    def sensitivity(self, settings: str) -> dict[str, Any] | None:
        """The check's sensitivity measured with ``settings`` (cap, direction, metric name)."""
        return self.cache.sensitivity(combine(self.keys.check, "sensitivity", settings))

    def put_sensitivity(self, settings: str, document: dict[str, Any]) -> None:
        self.cache.put_sensitivity(combine(self.keys.check, "sensitivity", settings), document)


class NoStore:
    """A check that is not cached: nothing is found, nothing is kept."""

    def reference(self) -> ReferenceEntry | None:
        return None

    def put_reference(self, entry: ReferenceEntry) -> None:
        pass

    def check(self) -> CheckEntry | None:
        return None

    def put_check(self, entry: CheckEntry) -> None:
        pass

    def deployed(self, runtime: str) -> DeployedEntry | None:
        return None

    def put_deployed(self, runtime: str, entry: DeployedEntry) -> None:
        pass

    def sensitivity(self, settings: str) -> dict[str, Any] | None:
        return None

    def put_sensitivity(self, settings: str, document: dict[str, Any]) -> None:
        pass


# The packages whose versions decide what a runtime makes of a recipe.
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "torchao": ("torchao",)}


def runtime_versions(runtime: str) -> str:
    """``onnxruntime 1.32.0, onnx 1.23.2, ...``: part of a deployed entry's key."""
    return ", ".join(f"{name} {_version(name)}" for name in RUNTIME_PACKAGES.get(runtime, ()))


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"
