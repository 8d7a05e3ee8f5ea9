"""The caches: the in-session identity memo, the persistent result cache and its keys."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pytest_compress.checks.cache import (
    KEY_PREFIX,
    UNSIZED,
    CheckEntry,
    IdentityMemo,
    ReferenceEntry,
    ResultCache,
    check_keys,
    checksum,
    combine,
)


class DictStore:
    """pytest's ``config.cache`` API over a dict."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


ENTRY = CheckEntry(
    float_metric=0.97, float_size=251_717, compressed_metric=0.95, compressed_size=17_200,
    sparsity=0.8,
)  # fmt: skip


def test_the_memo_computes_once_per_key_while_the_objects_are_the_same() -> None:
    memo = IdentityMemo()
    calls = []
    a, b = [1], [1]  # equal, but not the same object

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert memo.get("model", (a,), compute) == (1, False)
    assert memo.get("model", (a,), compute) == (1, True)
    assert memo.get("model", (b,), compute) == (2, False)  # a new object: computed again
    assert memo.get("other", (b,), compute) == (3, False)
    assert memo.get("model", (b,), compute) == (2, True)


def test_entries_round_trip_through_the_store() -> None:
    cache = ResultCache(DictStore())
    assert cache.reference("r") is None and cache.check("c") is None
    cache.put_reference("r", ReferenceEntry(0.97, 251_717))
    cache.put_check("c", ENTRY)
    assert cache.reference("r") == ReferenceEntry(0.97, 251_717)
    assert ResultCache(cache._store).check("c") == ENTRY  # a later session reads it back


def test_keys_live_under_the_plugins_prefix() -> None:
    store = DictStore()
    ResultCache(store).put_check("abc", ENTRY)
    ResultCache(store).put_reference("abc", ReferenceEntry(1.0, 1))
    assert sorted(store.values) == [f"{KEY_PREFIX}/check/abc", f"{KEY_PREFIX}/reference/abc"]


def test_a_check_written_in_this_session_is_measured_again_within_it() -> None:
    store = DictStore()
    cache = ResultCache(store)
    cache.put_check("c", ENTRY)
    assert cache.check("c") is None
    assert ResultCache(store).check("c") == ENTRY


@pytest.mark.parametrize(
    "stored",
    [
        None,
        [],
        "text",
        {},
        {**vars(ENTRY), "extra": 1},
        {k: v for k, v in vars(ENTRY).items() if k != "sparsity"},
        {**vars(ENTRY), "compressed_size": 1.5},
        {**vars(ENTRY), "compressed_size": -2},  # -1 is UNSIZED
        {**vars(ENTRY), "float_size": True},
        {**vars(ENTRY), "compressed_metric": "0.9"},
        {**vars(ENTRY), "sparsity": 1.5},
        {**vars(ENTRY), "sparsity": math.nan},
    ],
    ids=[
        "missing", "list", "string", "empty", "extra-field", "missing-field", "float-size",
        "negative-size", "bool-size", "string-metric", "sparsity-above-1", "nan-sparsity",
    ],
)  # fmt: skip
def test_an_entry_of_the_wrong_shape_counts_as_missing(stored: Any) -> None:
    # signed with a matching checksum: the shape alone is what is refused
    key = f"{KEY_PREFIX}/check/c"
    store = DictStore()
    store.values[key] = signed(key, stored)
    assert ResultCache(store).check("c") is None


def test_an_unsized_entry_reads_back_unsized() -> None:
    key = f"{KEY_PREFIX}/check/c"
    store = DictStore()
    store.values[key] = signed(key, {**vars(ENTRY), "compressed_size": UNSIZED})
    entry = ResultCache(store).check("c")
    assert entry is not None and not entry.sized and ENTRY.sized


def signed(key: str, stored: Any) -> Any:
    """``stored`` with the checksum a writer would give it (when it is a dict)."""
    return {**stored, "checksum": checksum(key, stored)} if isinstance(stored, dict) else stored


@pytest.mark.parametrize(
    "edit",
    [
        {"compressed_metric": 0.95},  # one digit changed
        {"compressed_metric": math.inf},  # an Infinity written in
        {"checksum": "0" * 32},
    ],
    ids=["digit", "infinity", "checksum"],
)
def test_an_entry_that_does_not_match_its_checksum_counts_as_missing(edit: dict) -> None:
    store = DictStore()
    ResultCache(store).put_check("c", CheckEntry(0.9, 100, 0.85, 25, 0.0))
    assert ResultCache(store).check("c") is not None
    key = f"{KEY_PREFIX}/check/c"
    store.values[key] = {**store.values[key], **edit}
    assert ResultCache(store).check("c") is None
    store.values[key] = {k: v for k, v in store.values[key].items() if k != "checksum"}
    assert ResultCache(store).check("c") is None  # an entry without one


def test_an_entry_moved_to_another_key_counts_as_missing() -> None:
    store = DictStore()
    ResultCache(store).put_check("c", ENTRY)
    store.values[f"{KEY_PREFIX}/check/d"] = store.values[f"{KEY_PREFIX}/check/c"]
    assert ResultCache(store).check("d") is None


def test_numbers_keep_their_types_when_json_wrote_a_float_as_an_int() -> None:
    store = DictStore()
    key = f"{KEY_PREFIX}/reference/r"
    store.values[key] = signed(key, {"metric": 1, "size": 10})
    reference = ResultCache(store).reference("r")
    assert reference == ReferenceEntry(1.0, 10) and isinstance(reference.metric, float)


BASE = dict(
    model="m", data="d", metric="top1", device="cpu", environment="env", recipe="int8",
    calibration="unused",
)  # fmt: skip


@pytest.mark.parametrize("part", ["model", "data", "metric", "device", "environment"])
def test_every_part_of_the_reference_changes_both_keys(part: str) -> None:
    keys = check_keys(**BASE)
    changed = check_keys(**{**BASE, part: BASE[part] + "2"})
    assert changed.reference != keys.reference and changed.check != keys.check


@pytest.mark.parametrize("part", ["recipe", "calibration"])
def test_the_recipe_and_calibration_change_only_the_check_key(part: str) -> None:
    keys = check_keys(**BASE)
    changed = check_keys(**{**BASE, part: BASE[part] + "2"})
    assert changed.reference == keys.reference and changed.check != keys.check


def test_combine_keeps_the_parts_apart() -> None:
    assert combine("ab", "c") != combine("a", "bc")
    assert combine("a", None) != combine("a", "None")
    assert combine("a", "b") == combine("a", "b")


def test_a_cache_that_does_not_read_still_stores_fresh_entries() -> None:
    store = DictStore()
    ResultCache(store).put_check("c", ENTRY)
    ResultCache(store).put_reference("r", ReferenceEntry(0.5, 3))
    refreshing = ResultCache(store, read=False)
    assert refreshing.check("c") is None and refreshing.reference("r") is None
    refreshing.put_check("c", CheckEntry(0.9, 1, 0.8, 1, 0.0))
    assert ResultCache(store).check("c") == CheckEntry(0.9, 1, 0.8, 1, 0.0)


def test_a_sensitivity_document_round_trips_and_an_edited_one_counts_as_missing() -> None:
    store = DictStore()
    document = {"layers": [{"layer": "fc1", "drop": 0.02}], "timed_out": False}
    ResultCache(store).put_sensitivity("k", document)
    later = ResultCache(store)
    assert later.sensitivity("k") == document and later.sensitivity("other") is None
    assert ResultCache(store, read=False).sensitivity("k") is None
    key = f"{KEY_PREFIX}/sensitivity/k"
    store.values[key]["document"]["layers"][0]["drop"] = 0.0  # a number changed
    assert ResultCache(store).sensitivity("k") is None
    store.values[key] = {"document": [], "checksum": checksum(key, {})}
    assert ResultCache(store).sensitivity("k") is None
