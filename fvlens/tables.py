"""Plain-text tables for the command line (no dependencies: the CLI prints them before and
without importing torch)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "fmt"]


def fmt(value: object) -> str:
    """A cell's text: floats to 3 decimals, everything else as ``str``."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows of ``{column: value}`` as aligned text columns (missing cells are blank)."""
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
