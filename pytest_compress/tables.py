"""Aligned text tables: the terminal report, the search trail and the sensitivity table.

One renderer, so every table the plugin prints aligns, pads and trims the same way.
``fit_table`` keeps a table within a width by shortening the cells of its text columns
(``shorten``: an ellipsis in the middle, so both ends of a node id or a recipe stay);
numbers are never cut. Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

ELLIPSIS = "..."
SEPARATOR = "  "


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The header and rows as lines, each column left-aligned to its widest cell.

    The last column is not padded, and trailing spaces are trimmed.
    """
    table = [list(header), *(list(row) for row in rows)]
    for cells in table:
        if len(cells) != len(header):
            raise ValueError(f"a table row has {len(cells)} cells, the header {len(header)}")
    widths = [max(len(cells[i]) for cells in table) for i in range(len(header) - 1)]
    return [
        SEPARATOR.join(
            [*(cell.ljust(w) for cell, w in zip(cells, widths, strict=False)), cells[-1]]
        ).rstrip()
        for cells in table
    ]


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: its middle replaced by ``...`` if longer."""
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    kept = width - len(ELLIPSIS)
    head = (kept + 1) // 2
    return text[:head] + ELLIPSIS + text[len(text) - (kept - head) :]


def fit_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    shrink: Sequence[int],
    minimum: int,
) -> list[str] | None:
    """``text_table`` whose lines are at most ``width`` long, the cells of the ``shrink``
    columns shortened (the widest first); None when that would cut one of them below
    ``minimum`` characters (the other columns alone leave too little room)."""
    table = [list(header), *(list(row) for row in rows)]
    natural = [max(len(cells[i]) for cells in table) for i in range(len(header))]
    widths = narrowed(natural, width - len(SEPARATOR) * (len(header) - 1), shrink, minimum)
    if widths is None:
        return None
    for cells in table:
        for column in shrink:
            cells[column] = shorten(cells[column], widths[column])
    return text_table(table[0], table[1:])


def narrowed(
    widths: Sequence[int], total: int, shrink: Sequence[int], minimum: int
) -> list[int] | None:
    """``widths`` with those at the ``shrink`` positions lowered (the widest first) until
    they add up to at most ``total``; None when one would go below ``minimum``."""
    widths = list(widths)
    excess = sum(widths) - total
    while excess > 0:
        widest = max(shrink, key=lambda column: widths[column])
        if widths[widest] <= minimum:
            return None
        widths[widest] -= 1
        excess -= 1
    return widths


def wrap_items(items: Sequence[str], width: int, indent: str = "") -> list[str]:
    """``items`` joined by two spaces into lines of at most ``width`` characters (each
    starting with ``indent``); an item is never split, one longer than a line stands alone."""
    lines: list[str] = []
    line = ""
    for item in items:
        candidate = f"{line}{SEPARATOR}{item}" if line else item
        if line and len(indent) + len(candidate) > width:
            lines.append(indent + line)
            candidate = item
        line = candidate
    if line:
        lines.append(indent + line)
    return lines
