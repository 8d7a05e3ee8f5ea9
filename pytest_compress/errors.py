"""The errors pytest-compress raises about its input, as one family.

``CompressError`` is a ``ValueError``: a spec, a model, data or a file that the library
cannot use, with a message that names the culprit and the fix. The pytest plugin turns
exactly these into "could not run the check" failures; anything else (an exception from
the user's model, metric or data) keeps its own traceback. Subclasses let a caller tell
the cases apart. Standard library only: every layer may raise them.
"""

from __future__ import annotations


class CompressError(ValueError):
    """Input pytest-compress cannot use; the message names it and how to fix it."""


class SpecError(CompressError):
    """An invalid recipe: a ``QuantSpec`` / ``PruneSpec`` field or a shorthand string."""


class ModelError(CompressError):
    """A model that cannot be compressed as asked (non-finite weights, no matching layer)."""


class DataError(CompressError):
    """Data that cannot be measured on (empty, a one-shot iterator, a batch of the wrong form)."""


class CalibrationError(CompressError):
    """An activation quantizer that saw no data: its layer never ran on the calibration data."""


class FileFormatError(CompressError):
    """A compressed file that cannot be read back (truncated, corrupted, another version)."""


class BudgetError(CompressError):
    """A budget or metric direction that cannot mean anything for the check's metric."""


class MetricError(CompressError):
    """A metric that returned something unusable: a vector sum, a negative count, NaN."""
