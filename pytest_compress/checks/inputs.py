"""What a session's checks are measured on, prepared once: data read once, fingerprints, keys.

``PreparedInputs`` belongs to one session. For each data fixture it reads the batches once
(``materialize``), and for each model and metric it computes the fingerprint once (per
fixture and object, like the float measurements); from those it derives each check's
persistent ``CheckKeys``. What the reports should say about it (data streamed, something
that cannot be fingerprinted) collects in ``notes``. No pytest import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..units import format_size
from .cache import CheckKeys, IdentityMemo, check_keys
from .fingerprint import (
    PLAIN_DATA,
    Unfingerprintable,
    environment_fingerprint,
    metric_fingerprint,
    model_fingerprint,
)
from .materialize import MEGABYTE, EvaluationData, materialize
from .request import Recipe


class PreparedInputs:
    """Materialised data and fingerprints, per fixture and object, for one session."""

    def __init__(
        self,
        *,
        device: str,
        cache_mb: float,
        fingerprints: bool,
        notes: dict[str, str] | None = None,
    ) -> None:
        self.device = device
        self.cache_mb = cache_mb
        self.fingerprints = fingerprints  # only worth computing for the persistent cache
        self._data = IdentityMemo()
        self._prints = IdentityMemo()
        # what the reports should say, by topic, so that xdist workers' notes merge
        self.notes: dict[str, str] = {} if notes is None else notes

    def data(self, label: str, data: Any, what: str = "data") -> EvaluationData:
        """``data`` read once per session (kept on the device, or streamed when too large)."""

        def read() -> EvaluationData:
            return materialize(
                data,
                device=self.device,
                limit_bytes=int(self.cache_mb * MEGABYTE),
                fingerprint=self.fingerprints,
                what=what,
            )

        evaluation, _ = self._data.get(label, (data,), read)
        if evaluation.streamed:
            self.notes[f"streamed {label}"] = streamed_note(label, evaluation, self.cache_mb)
        if evaluation.unfingerprintable is not None:
            self.notes[f"uncached data {label}"] = (
                f"not cached: {what} {label}: {evaluation.unfingerprintable}, which cannot be "
                "fingerprinted"
            )
        return evaluation

    def keys(
        self,
        recipe: Recipe,
        *,
        model: tuple[str, Any],
        data: EvaluationData,
        metric: tuple[str, Any],
        calibration: EvaluationData,
        unverified: bool = False,
    ) -> CheckKeys | None:
        """The check's persistent keys; None when something it depends on has no fingerprint.

        ``model`` and ``metric`` are (fixture label, object) pairs.
        """
        model_print = self._fingerprint("model", *model, model_fingerprint)
        metric_print = self._fingerprint("metric", *metric, metric_fingerprint)
        # calibration data changes only the recipes that calibrate on it
        calibration_print = calibration.fingerprint if recipe.calibrates else "unused"
        data_print = data.fingerprint
        if (
            model_print is None
            or data_print is None
            or metric_print is None
            or calibration_print is None
        ):
            return None
        return check_keys(
            model=model_print,
            data=data_print,
            metric=metric_print,
            device=self.device,
            environment=environment_fingerprint(),
            # numbers measured without the invariant gate never stand for verified ones
            recipe=repr((recipe.quantize, recipe.prune)) + (" unverified" if unverified else ""),
            calibration=calibration_print,
        )

    def model_key(self, label: str, model: Any) -> str | None:
        """The model's fingerprint (once per session), or None when it has none."""
        return self._fingerprint("model", label, model, model_fingerprint)

    def compressor_key(self, label: str, compressor: Any) -> str | None:
        """What a ``compressor=`` deployment is cached under: its code and closure (as a
        metric's), or None when they cannot be fingerprinted (then it is not cached)."""
        fingerprint = self._fingerprint("compressor", label, compressor, metric_fingerprint)
        return None if fingerprint is None else f"compressor {fingerprint}"

    def _fingerprint(
        self, kind: str, label: str, value: Any, compute: Callable[[Any], str]
    ) -> str | None:
        """A model's or metric's fingerprint, once per session per fixture and object."""

        def fingerprint() -> str | None:
            try:
                return compute(value)
            except Unfingerprintable as error:
                self.notes[f"uncached {kind} {label}"] = (
                    f"not cached: {kind} {label} holds {error}, which cannot be fingerprinted; "
                    f"to cache it, hold plain data there ({PLAIN_DATA}) or nothing"
                )
                return None

        return self._prints.get((kind, label), (value,), fingerprint)[0]


def streamed_note(label: str, evaluation: EvaluationData, cache_mb: float) -> str:
    size = format_size(evaluation.nbytes)
    size = size if evaluation.counted_all else f"more than {size}"
    return (
        f"data {label} ({size}) is larger than --compress-cache-mb={cache_mb:g}: "
        "streamed, so every evaluation reads it again"
    )
