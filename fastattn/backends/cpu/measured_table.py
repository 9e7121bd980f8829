"""A measured crossover table of the ``cpu`` backend: one JSON file next to this module.

Each table (``activation_crossover.json``, ``decode_crossover.json``, ``ffn_crossover.json``) is
written by a benchmark in ``benchmarks/`` and holds ``{"machine": {...}, "entries": [...]}``: the
machine it was measured on (CPU model, ISA, threads) and one entry per measured case, with the
ratio of torch's time to fastattn's. The modules that decide from them (``*_crossover.py``) each
hold one :class:`MeasuredTable`; the benchmarks write through it too. A missing file is an
empty table: ``auto`` then keeps the native kernels.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional


class MeasuredTable:
    """The table in the file ``name`` next to this module, read once on first use."""

    def __init__(self, name: str):
        self.path = Path(__file__).with_name(name)

    @functools.cached_property
    def _data(self) -> tuple[Optional[dict], tuple[dict, ...]]:
        if not self.path.exists():
            return None, ()
        data = json.loads(self.path.read_text())
        return data.get("machine"), tuple(data["entries"])

    def entries(self) -> tuple[dict, ...]:
        """The measured cases (dicts, as written by the benchmark); ``()`` without a table."""
        return self._data[1]

    def machine(self) -> Optional[dict]:
        """The machine the table was measured on (CPU model, ISA, threads), if there is a table."""
        return self._data[0]

    def stored(self) -> dict:
        """The whole record as stored (``{}`` without a table): what ``--merge`` extends."""
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def write(self, record: dict) -> None:
        """Store ``record`` (``machine``, ``entries`` and the command(s) that measured them) as
        the table, for the benchmarks' ``--write``; this process keeps what it had read."""
        self.path.write_text(json.dumps(record, indent=1) + "\n")
