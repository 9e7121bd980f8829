"""The static fitness table of every GPU kernel, computed with no GPU.

Two sources, merged into one list of records:

* Triton: every kernel configuration compiled ahead of time for each arch
  (:func:`fastattn.buildcheck.triton_aot.kernel_reports`);
* CUDA C++: nvcc's ``-Xptxas -v`` report for each kernel and arch
  (:func:`fastattn.buildcheck.ptxas.kernel_reports`).

Each record has the fields ``kernel``, ``backend`` ("triton" or "cuda"), ``config``,
``arch``, ``registers`` (per thread), ``shared_memory_bytes`` (per block, static plus
dynamic), ``spill_bytes`` (stores plus loads), ``occupancy`` (theoretical: resident warps
per SM over the arch's maximum, from registers, shared memory and block size). A source
that is missing or fails is reported in :attr:`KernelReport.missing` with the reason,
never replaced by made-up records.

``python -m fastattn info --kernels`` prints :func:`format_table`; with ``--json`` the
list of records. With ``--sass`` (``collect(sass=True)``) every record also carries ``sass``:
the main-loop machine-code analysis and static ceilings of :mod:`fastattn.buildcheck.sass_report`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from fastattn.kernels._configs import shared_memory_limit
from fastattn.text_table import render_table

ARCHS = (80, 90)
"""The archs the report compiles for by default: sm_80 and sm_90."""

FIELDS = ("kernel", "backend", "config", "arch", "registers", "shared_memory_bytes", "spill_bytes", "occupancy")


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resources of an NVIDIA arch (CUDA C Programming Guide, compute capabilities table)."""

    max_warps: int
    max_blocks: int
    registers: int  # 32-bit registers per SM
    max_regs_per_thread: int
    smem_per_sm: int  # bytes usable for shared memory per SM (the carveout's maximum)
    smem_per_block: int  # largest opt-in dynamic shared memory per block
    smem_reserved_per_block: int  # the runtime reserves 1 KiB per block from sm_80 on


ARCH_LIMITS = {
    80: ArchLimits(64, 32, 65536, 255, 164 * 1024, shared_memory_limit(80), 1024),
    86: ArchLimits(48, 16, 65536, 255, 100 * 1024, shared_memory_limit(86), 1024),
    89: ArchLimits(48, 24, 65536, 255, 100 * 1024, shared_memory_limit(89), 1024),
    90: ArchLimits(64, 32, 65536, 255, 228 * 1024, shared_memory_limit(90), 1024),
}

_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
_SMEM_ALLOC_UNIT = 128  # shared memory is allocated per block in units of 128 bytes


def arch_number(arch) -> int:
    """80 from 80, "80", "sm_80", "sm_90a", "9.0"."""
    text = str(arch).lower().replace("sm_", "").replace("compute_", "").rstrip("a")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major) * 10 + int(minor)
    return int(text)


def theoretical_occupancy(arch, threads_per_block: int, registers: int, shared_memory_bytes: int) -> float:
    """Resident warps per SM over the arch's maximum, limited by warps, blocks, registers
    and shared memory; 0.0 when one block does not fit at all (the kernel cannot launch)."""
    lim = ARCH_LIMITS[arch_number(arch)]
    warps = max(1, -(-threads_per_block // 32))
    if warps > lim.max_warps or registers > lim.max_regs_per_thread or shared_memory_bytes > lim.smem_per_block:
        return 0.0
    blocks = min(lim.max_blocks, lim.max_warps // warps)
    if registers > 0:
        regs_per_warp = -(-registers * 32 // _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
        blocks = min(blocks, lim.registers // (regs_per_warp * warps))
    if shared_memory_bytes > 0:
        smem = -(-(shared_memory_bytes + lim.smem_reserved_per_block) // _SMEM_ALLOC_UNIT) * _SMEM_ALLOC_UNIT
        blocks = min(blocks, lim.smem_per_sm // smem)
    return round(blocks * warps / lim.max_warps, 4)


@dataclass
class KernelReport:
    """The merged records, and for each source that gave none, why."""

    records: list = field(default_factory=list)
    missing: dict = field(default_factory=dict)  # source name -> reason

    @property
    def ok(self) -> bool:
        """No source missing, and every record fits its arch without spilling."""
        return not self.missing and not self.problems()

    def problems(self) -> list:
        """One line per record that did not compile, spills, does not fit the arch's shared memory,
        cannot launch, or whose occupancy cannot be computed."""
        out = []
        for r in self.records:
            where = f"{r['backend']} {r['kernel']} [{_config_text(r['config'])}] {r['arch']}"
            if r.get("error"):
                out.append(f"{where}: did not compile: {str(r['error']).splitlines()[0][:200]}")
                continue
            if r.get("fits_shared_memory") is False:
                out.append(f"{where}: does not fit the arch's shared memory")
            if r.get("spill_bytes"):
                out.append(f"{where}: spills {r['spill_bytes']} bytes")
            if r.get("stack_bytes"):
                out.append(f"{where}: uses {r['stack_bytes']} bytes of local-memory stack")
            lim = ARCH_LIMITS.get(_safe_arch(r["arch"]))
            if lim and r.get("shared_memory_bytes") and r["shared_memory_bytes"] > lim.smem_per_block:
                out.append(f"{where}: {r['shared_memory_bytes']} bytes of shared memory > {lim.smem_per_block}")
            if r.get("occupancy") == 0:
                out.append(f"{where}: zero occupancy (a block does not fit)")
            elif r.get("occupancy") is None:
                out.append(f"{where}: occupancy unknown (the source gives no block size for this kernel)")
        return out


def _safe_arch(arch) -> Optional[int]:
    try:
        return arch_number(arch)
    except (TypeError, ValueError):
        return None


def _config_text(config) -> str:
    if isinstance(config, dict):
        return ",".join(f"{k}={v}" for k, v in config.items())
    return "" if config is None else str(config)


def _normalise(record: dict, backend: str) -> dict:
    """The record with every documented field present (and in the documented order); a
    missing occupancy is computed from the block size when the record carries one."""
    rec = dict(record)
    rec.setdefault("backend", backend)
    if rec.get("occupancy") is None:
        threads = rec.get("threads_per_block") or rec.get("threads")
        if threads is None and isinstance(rec.get("config"), dict) and "num_warps" in rec["config"]:
            threads = 32 * int(rec["config"]["num_warps"])
        if threads and not rec.get("error") and _safe_arch(rec.get("arch")) in ARCH_LIMITS:
            rec["occupancy"] = theoretical_occupancy(rec["arch"], int(threads), int(rec.get("registers") or 0),
                                                     int(rec.get("shared_memory_bytes") or 0))
    if _safe_arch(rec.get("arch")) is not None:
        # One spelling for both sources: "sm_80", "sm_90a" (the arch-specific suffix kept).
        rec["arch"] = "sm_" + str(rec["arch"]).lower().replace("sm_", "")
    ordered = {k: rec.get(k) for k in FIELDS}
    ordered.update({k: v for k, v in rec.items() if k not in ordered})
    return ordered


# Where each source lives, first found wins: (module, function taking archs -> list[dict]).
_TRITON_SOURCES = (("fastattn.buildcheck.triton_aot", "kernel_reports"),)
_CUDA_SOURCES = (("fastattn.buildcheck.ptxas", "kernel_reports"),)


def _load(sources) -> tuple[Optional[Callable], str]:
    reasons = []
    for module, fn in sources:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing_self = exc.name is not None and module.startswith(exc.name)
            reasons.append(f"{module} not found" if missing_self else f"{module}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001  (reported, not fatal: a report of what is missing)
            reasons.append(f"{module}: {type(exc).__name__}: {exc}")
            continue
        if hasattr(mod, fn):
            return getattr(mod, fn), ""
        reasons.append(f"{module} has no {fn}()")
    return None, "; ".join(reasons)


def collect(archs=ARCHS, backends=("triton", "cuda"), sass: bool = False) -> KernelReport:
    """Compile/parse every kernel for ``archs`` and merge the records (see the module docstring).

    ``sass``: also disassemble every compiled kernel and attach its main-loop analysis
    (:func:`fastattn.buildcheck.sass_report.analyse`) as each record's ``sass``."""
    report = KernelReport()
    archs = tuple(arch_number(a) for a in archs)
    for backend, sources in (("triton", _TRITON_SOURCES), ("cuda", _CUDA_SOURCES)):
        if backend not in backends:
            continue
        fn, why = _load(sources)
        if fn is None:
            report.missing[backend] = f"no {backend} kernel report source in this installation ({why})"
            continue
        try:
            # The sources hand out their compiled artefacts (cubin paths) only when asked.
            records = fn(archs, artefacts=True) if sass else fn(archs)
        except Exception as exc:  # noqa: BLE001
            report.missing[backend] = f"the {backend} kernel report failed: {type(exc).__name__}: {exc}"
            continue
        if not records:
            report.missing[backend] = f"the {backend} kernel report returned no records"
            continue
        report.records.extend(_normalise(r, backend) for r in records)
    if sass:
        from fastattn.buildcheck import sass_report

        sass_report.analyse(report.records)
    return report


def format_table(report: KernelReport) -> str:
    """The records as an aligned text table, then the missing sources and any problems."""
    header = ("backend", "kernel", "config", "arch", "regs", "smem (B)", "spill (B)", "occupancy")
    rows = [
        (r["backend"], r["kernel"], _config_text(r["config"]), str(r["arch"]), _num(r["registers"]),
         _num(r["shared_memory_bytes"]), _num(r["spill_bytes"]),
         "-" if r["occupancy"] is None else f"{100 * r['occupancy']:.0f}%")
        for r in sorted(report.records, key=lambda r: (r["backend"], r["kernel"], _config_text(r["config"]), str(r["arch"])))
    ]
    lines = [render_table(header, rows)] if rows else ["(no kernel records)"]
    for backend, why in report.missing.items():
        lines.append(f"{backend}: not reported: {why}")
    problems = report.problems()
    lines.append(f"{len(report.records)} records; " + ("no spills, every kernel fits its arch" if not problems
                                                       else f"{len(problems)} problems:"))
    lines.extend(f"  {p}" for p in problems)
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else str(value)
