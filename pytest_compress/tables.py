"""Aligned text tables: the terminal report, the search trail and the sensitivity table.

One renderer, so every table the plugin prints aligns, pads and trims the same way.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence


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
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(cells, widths, strict=False)), cells[-1]]
        ).rstrip()
        for cells in table
    ]
