"""The records :func:`fastattn.patch` and :func:`fastattn.verify` return, printable as tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3e}"
    return "-" if value is None else str(value)


class Swap(NamedTuple):
    name: str
    original: str
    replacement: str


class Skip(NamedTuple):
    name: str
    reason: str


@dataclass
class PatchReport:
    """What :func:`fastattn.patch` did.

    ``swapped``: ``(qualified name, original type, replacement)`` per swapped module (``""``
    is the root); ``skipped``: ``(qualified name, reason)`` per candidate left as it was.
    ``print(report)`` shows both as tables.
    """

    swapped: list[Swap] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"fastattn.patch: {len(self.swapped)} swapped, {len(self.skipped)} skipped"]
        if self.swapped:
            parts.append(_table(("module", "original", "replacement"),
                                [(s.name or "<root>", s.original, s.replacement) for s in self.swapped]))
        if self.skipped:
            parts.append(_table(("module", "left as is because"), [(s.name or "<root>", s.reason) for s in self.skipped]))
        return "\n\n".join(parts)


class ModuleError(NamedTuple):
    """Largest difference of one swapped module's output over the calls of one verify run
    (its input already carries the error of the modules before it)."""

    name: str
    type: str
    calls: int
    max_abs_err: float
    max_rel_err: float


class ParamError(NamedTuple):
    name: str
    rel_err: float


@dataclass
class VerifyReport:
    """What :func:`fastattn.verify` measured, fastattn against the original modules.

    ``max_abs_err``: largest ``|out_fastattn - out_original|`` over every floating output;
    ``max_rel_err``: largest ``max|diff| / max|out_original|`` over the output tensors;
    ``grad_max_rel_err``: largest ``||g_fastattn - g_original|| / ||g_original||`` over the
    parameters (``None`` without backward; ``worst_params`` lists the largest few);
    ``per_module``: one :class:`ModuleError` per swapped module that ran; ``ok``: both
    relative errors are within ``rtol``.
    """

    max_abs_err: float
    max_rel_err: float
    grad_max_rel_err: Optional[float]
    per_module: list[ModuleError]
    ok: bool
    rtol: float
    worst_params: list[ParamError] = field(default_factory=list)

    def __str__(self) -> str:
        grad = "-" if self.grad_max_rel_err is None else f"{self.grad_max_rel_err:.3e}"
        head = (f"fastattn.verify: {'OK' if self.ok else 'MISMATCH'} (rtol {self.rtol:g}): "
                f"outputs max abs {self.max_abs_err:.3e}, max rel {self.max_rel_err:.3e}; "
                f"gradients max rel {grad}")
        parts = [head]
        if self.per_module:
            parts.append(_table(("module", "type", "calls", "max abs err", "max rel err"), self.per_module))
        if self.worst_params:
            parts.append(_table(("parameter", "grad rel err"), self.worst_params))
        return "\n\n".join(parts)
