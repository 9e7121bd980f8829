"""Plain aligned text tables, as the command line and the static reports print them."""
from __future__ import annotations


def render_table(header, rows) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cols = list(zip(header, *rows)) if rows else [(h,) for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]

    def fmt(row):
        cells = []
        for value, width in zip(row, widths):
            text = str(value)
            cells.append(text.rjust(width) if _numeric(text) else text.ljust(width))
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _numeric(text: str) -> bool:
    return bool(text) and text.replace(".", "", 1).replace("%", "").replace("x", "").replace("-", "", 1).isdigit()
