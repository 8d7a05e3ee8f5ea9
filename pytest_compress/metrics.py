"""What a metric is, in words: its name, which way is better, and how its values read.

Every report, failure message and search trail asks the same questions of a metric
(does it render in percent? is a change a drop or an increase?), and they are answered
here, once. Standard library only.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

DEFAULT_METRIC = "accuracy"

# The built-in metrics, by the name a marker's ``metric=`` gives: (higher is better,
# percent, what it measures). ``top<k>`` stands for every k (``topk`` is ``top5``).
BUILTIN_METRICS: dict[str, tuple[bool, bool, str]] = {
    "top1": (True, True, "top-1 accuracy against class-index targets (the default)"),
    "top<k>": (True, True, "top-k accuracy against class-index targets; topk is top5"),
    "cosine": (True, False, "mean cosine similarity to the float model's outputs"),
    "mse": (False, False, "mean squared error against the float model's outputs"),
    "relative_error": (
        False,
        False,
        "mean per-sample ||compressed - float|| / ||float|| of the outputs",
    ),
    "perplexity": (False, False, "exp of the mean next-token cross-entropy (causal LMs)"),
}
# Metrics measured against the float model's outputs: their batches need no targets.
RELATIVE_METRICS = ("cosine", "mse", "relative_error")
BUILTIN_FORMS = (
    "top1, top5 (any top<k>; topk is top5), cosine, mse, relative_error, perplexity, each "
    'optionally with the output it reads: "cosine(pooler_output)"'
)
_BUILTIN = re.compile(r"(top\d+|topk|cosine|mse|relative_error|perplexity)(?:\((\w+)\))?")
_CALL_LIKE = re.compile(r"(\w+)\((.*)\)")


@dataclass(frozen=True)
class BuiltinName:
    """A built-in metric as ``metric="..."`` names it: ``top5``, ``cosine(pooler_output)``.

    ``base`` is ``top`` (with ``k``), ``cosine``, ``mse``, ``relative_error`` or
    ``perplexity``; ``key`` the output it reads (None: found in the outputs).
    """

    base: str
    k: int = 1
    key: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.base in ("top", "cosine")

    @property
    def relative(self) -> bool:
        """Whether it compares with the float model's outputs (batches need no targets)."""
        return self.base in RELATIVE_METRICS

    @property
    def title(self) -> str:
        """The name reports use without the output: ``accuracy`` for top-1, ``top5``, ..."""
        if self.base == "top":
            return DEFAULT_METRIC if self.k == 1 else f"top{self.k}"
        return self.base

    def named(self, source: str | None) -> str:
        """The report's name, saying which output was read: ``cosine(sentence_embedding)``."""
        return self.title if source is None else f"{self.title}({source})"

    def kind(self, source: str | None = None) -> MetricKind:
        return MetricKind(self.named(source), self.higher_is_better, percent=self.base == "top")


def builtin_name(text: str) -> BuiltinName | None:
    """The built-in metric ``text`` names, or None for a fixture's name.

    Built-in names are reserved: ``"cosine"`` is the built-in even where a fixture of that
    name exists. Text shaped like a call (``"cosin(logits)"``, ``"top0"``) that names no
    built-in is a ``ValueError`` listing them.
    """
    text = text.strip()
    match = _BUILTIN.fullmatch(text)
    if match is not None:
        base, key = match.group(1), match.group(2)
        k = 5 if base == "topk" else int(base[3:]) if base.startswith("top") else 1
        if base.startswith("top"):
            if k < 1:
                raise ValueError(f"{text!r}: top-k accuracy needs k >= 1; {unknown_hint(text)}")
            base = "top"
        return BuiltinName(base, k, key)
    if _CALL_LIKE.fullmatch(text) or re.fullmatch(r"top\d*|topk.+", text):
        raise ValueError(f"{text!r} is not a built-in metric; {unknown_hint(text)}")
    return None


def unknown_hint(text: str) -> str:
    """The built-in metrics, and the closest one to ``text`` when one is close."""
    head = _CALL_LIKE.fullmatch(text)
    stem = head.group(1) if head else text
    names = ["top1", "top5", "topk", *RELATIVE_METRICS, "perplexity"]
    close = difflib.get_close_matches(stem, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}the built-ins are {BUILTIN_FORMS}"


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
        """The kind of a metric known by name: accuracy (``accuracy``, ``top5``, with or
        without the output read, ``accuracy(logits)``) reads in percent, others as numbers."""
        stem = name.split("(", 1)[0]
        percent = stem == DEFAULT_METRIC or re.fullmatch(r"top\d+", stem) is not None
        return cls(name, higher_is_better, percent=percent)

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
