"""What the Triton kernel modules declare about their compiled configurations.

* :data:`ARCHS` and :func:`shared_memory_limit`: the compute capabilities the package targets
  and the shared memory one block may use on each.
* :func:`select_compiled`: which candidate configs of one specialisation are worth running,
  from what the compiler reports for each; the launchers apply it on the GPU, and the
  ahead-of-time report (:mod:`fastattn.buildcheck.triton_aot`) applies the same rule offline.
* :class:`AotCase` and :func:`signature_for`: how a kernel module's ``aot_cases()`` describes
  one specialisation for an ahead-of-time compile (plain data: nothing here compiles).

The compiling, the ptxas reports and the on-disk cache are build verification and live in
:mod:`fastattn.buildcheck.triton_aot`, which the runtime never imports.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

ARCHS = (80, 86, 89, 90)
"""Compute capabilities the package targets."""

# The opt-in maximum of shared memory per block (CUDA C Programming Guide, "Technical
# Specifications per Compute Capability"); the other per-SM limits, which only the offline
# occupancy estimate needs, are in fastattn.buildcheck.kernel_report.ARCH_LIMITS.
_SMEM_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def shared_memory_limit(arch: int) -> int:
    """Bytes of shared memory one block may use on compute capability ``arch``."""
    return _SMEM_PER_BLOCK[arch]


@dataclass(frozen=True)
class AotCase:
    """One kernel specialisation to compile ahead of time.

    ``fn`` is the ``@triton.jit`` function (not its autotuner); ``signature`` maps every
    non-constexpr argument name to a Triton type string (``"*fp16"``, ``"i32"``,
    ``"fp32"``); ``constexprs`` gives every ``tl.constexpr`` argument (and may pin runtime
    arguments, e.g. a stride of 1, as Triton's launcher specialises them); ``divisible_by_16``
    names the arguments assumed multiples of 16 (pointers and most strides in practice).
    ``archs`` restricts the case to the archs whose autotuner keeps it (None: all).
    """

    kernel: str
    fn: Any
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    config: dict = field(default_factory=dict)
    divisible_by_16: tuple = ()
    archs: Optional[tuple] = None
    origin: Optional[tuple] = None  # (module, index in its aot_cases()), set by discover_cases
    maxnreg: Optional[int] = None  # ptxas's register cap per thread, as the launch config sets it
    # Cases sharing a group are one specialisation's candidate configs: the autotuner runs those
    # the compiler accepts for it (see select_compiled); None: the case always launches.
    group: Optional[tuple] = None

    def key(self) -> str:
        # cache_key hashes the kernel *and* the @triton.jit helpers it calls (src alone would not).
        src = getattr(self.fn, "cache_key", None) or getattr(self.fn, "src", "") or ""
        body = json.dumps([self.kernel, src, sorted(self.signature.items()), sorted((k, repr(v)) for k, v in
                           self.constexprs.items()), self.num_warps, self.num_stages, sorted(self.divisible_by_16)]
                          + ([self.maxnreg] if self.maxnreg is not None else []))
        return hashlib.sha256(body.encode()).hexdigest()[:24]


def signature_for(fn, pointer_types: dict, default_pointer: str, floats: Iterable[str] = (),
                  constexprs: Optional[dict] = None, int64s: Iterable[str] = ()) -> dict:
    """A signature for ``fn``: names starting with an upper-case letter are pointers (type from
    ``pointer_types`` or ``default_pointer``), names in ``floats`` are fp32, in ``int64s`` i64,
    the rest i32; ``constexprs`` are marked ``"constexpr"``."""
    constexprs = constexprs or {}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name[0].isupper():
            sig[name] = pointer_types.get(name, default_pointer)
        elif name in floats:
            sig[name] = "fp32"
        elif name in int64s:
            sig[name] = "i64"
        else:
            sig[name] = "i32"
    return sig


def select_compiled(configs: list, reports: list, smem_limit: int) -> list:
    """The candidates worth running, from what the compiler reports for each (``reports[i]`` is
    ``(shared_memory_bytes, spill_bytes)`` of ``configs[i]`` compiled for one exact
    specialisation, or None when that report could not be had).

    Kept: those within the arch's shared memory per block that spill no register. When every
    candidate spills, those that fit with the fewest spilled bytes (a slow kernel beats no
    kernel, and the report flags it); a candidate without a report is kept (its launch tells).
    Never empty: when nothing fits, all are returned and the launch raises the compiler's error.
    """
    known = [(c, r) for c, r in zip(configs, reports) if r is not None]
    unknown = [c for c, r in zip(configs, reports) if r is None]
    fits = [(c, r) for c, r in known if r[0] <= smem_limit]
    clean = [c for c, r in fits if r[1] == 0]
    if clean or unknown:
        return clean + unknown
    if fits:
        least = min(r[1] for _, r in fits)
        return [c for c, r in fits if r[1] == least]
    return list(configs)
