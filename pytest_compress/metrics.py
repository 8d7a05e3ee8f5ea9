"""What a metric is, in words: its name, which way is better, and how its values read.

Every report, failure message and search trail asks the same questions of a metric
(does it render in percent? is a change a drop or an increase?), and they are answered
here, once. Standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_METRIC = "accuracy"


@dataclass(frozen=True)
class MetricKind:
    """How one metric reads.

    - ``name``: shown in every report (``accuracy``, ``mse``, a fixture's name).
    - ``higher_is_better``: False for a loss or an error rate; a *drop* is then the increase.
    - ``percent``: the metric is a fraction shown as a percentage, and its differences in
      percentage points (top-1 accuracy). Otherwise values show with four significant digits.
    """

    name: str = DEFAULT_METRIC
    higher_is_better: bool = True
    percent: bool = True

    @classmethod
    def named(cls, name: str, higher_is_better: bool = True) -> MetricKind:
        """The kind of a metric known by name: accuracy reads in percent, others as numbers."""
        return cls(name, higher_is_better, percent=name == DEFAULT_METRIC)

    @property
    def drop_word(self) -> str:
        """What a loss of quality is called: ``drop``, or ``increase`` when lower is better."""
        return "drop" if self.higher_is_better else "increase"

    @property
    def worse(self) -> str:
        """The comparison that reads "worse than": ``<``, or ``>`` when lower is better."""
        return "<" if self.higher_is_better else ">"

    def value(self, value: float, extra_digits: int = 0) -> str:
        """A metric value: ``97.8%`` in percent, four significant digits otherwise."""
        if self.percent and math.isfinite(value):
            return f"{value * 100:.{1 + extra_digits}f}%"
        return f"{value:.{4 + extra_digits}g}"

    def difference(self, value: float, extra_digits: int = 0) -> str:
        """A difference of values: ``2.9 pp`` (percentage points) in percent, else a number."""
        if self.percent and math.isfinite(value):
            return f"{value * 100:.{1 + extra_digits}f} pp"
        return f"{value:.{4 + extra_digits}g}"

    def drop(self, before: float, after: float) -> float:
        """How much quality was lost from ``before`` to ``after`` (positive = worse)."""
        return before - after if self.higher_is_better else after - before
