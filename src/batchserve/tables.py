"""Aligned plain-text tables for terminal reports: one renderer for every command's table.

Callers build rows of string cells; a column's format spec gives its
alignment and least width in `format`'s own notation ("<" left, ">" right,
">10" right in at least 10 characters), and a column without a width is as
wide as its widest cell.
"""

from __future__ import annotations

from collections.abc import Sequence

REPORT_WIDTH = 62
"""Line width of the benchmark-report layout (vLLM's): a title banner, label/value rows, closing rule."""


def banner(text: str, width: int, fill: str = "=") -> str:
    """`text` centred in a line of `fill` characters, the title line of the benchmark-report layout."""
    return f" {text} ".center(width, fill)


def align_rows(rows: Sequence[Sequence[str]], specs: Sequence[str], sep: str = " ",
               width: int | None = None) -> list[str]:
    """Each row as one line of aligned cells; `width` widens the first column until every line is that long."""
    least = [int(spec[1:] or 0) for spec in specs]
    widths = [max([least[i], *(len(row[i]) for row in rows)]) for i in range(len(specs))]
    if width is not None:
        widths[0] = max(widths[0], width - sum(widths[1:]) - len(sep) * (len(specs) - 1))
    return [sep.join(format(cell, f"{spec[0]}{w}") for cell, spec, w in zip(row, specs, widths)) for row in rows]


def render_table(rows: Sequence[Sequence[str]], specs: Sequence[str], header: Sequence[str] | None = None,
                 title: str | None = None, sep: str = " ", width: int | None = None,
                 underline: bool = False) -> str:
    """Rows under an optional header (`underline`d with dashes); a `title` frames them in '=' lines."""
    lines = align_rows([header, *rows] if header else rows, specs, sep, width)
    full = max(map(len, lines), default=width or 0)
    if header and underline:
        lines.insert(1, "-" * full)
    if title is not None:
        lines = [banner(title, full), *lines, "=" * full]
    return "\n".join(lines)
