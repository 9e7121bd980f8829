"""Ahead-of-time compilation of Triton kernel configs for NVIDIA archs, with no GPU.

Each kernel module of :mod:`fastattn.kernels` may define ``aot_cases() -> list[AotCase]``
(:class:`fastattn.kernels._configs.AotCase`): one case per (kernel, config, specialisation)
that its autotuner can pick. :func:`kernel_reports`
compiles every case for each requested compute capability with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` (Triton needs no
device for that), reads the shared memory from the compiled metadata, and the registers
and spill bytes from ``ptxas -v`` run on the generated PTX with the ptxas Triton itself
uses for that arch (registers are only known to the driver after loading otherwise). It
estimates the occupancy from the arch's per-SM limits. Results are cached on disk
(``$FASTATTN_CACHE_DIR`` or ``~/.cache/fastattn/aot``) keyed by the kernel source, the
case and the Triton version, because a compile takes seconds; next to each record the
cache keeps the compiled cubin and the Triton IR (gzipped), which
``kernel_reports(..., artefacts=True)`` hands out for machine-code analysis
(:mod:`fastattn.buildcheck.sass`).

Records: ``kernel``, ``backend`` ("triton"), ``config``, ``arch``
("sm_80"), ``registers``, ``shared_memory_bytes``, ``spill_bytes``, ``occupancy``
(resident warps per SM over the maximum, 0..1), plus ``shared_memory_limit``,
``fits_shared_memory``, ``error`` (None when it compiled) and ``kept``.

A kernel module may offer several candidate configs of one specialisation (cases sharing a
``group``): the records say which the autotuner keeps by what the compiler reported for that
specialisation (:func:`select_compiled`: within shared memory, no spills), the rule the launch
code applies on the GPU too; :func:`kernel_reports` returns the kept ones unless asked for all.
"""
from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import inspect
import json
import multiprocessing
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional

import fastattn.kernels
from fastattn.buildcheck._cache import cache_dir, read_json, write_json
from fastattn.buildcheck.kernel_report import ARCH_LIMITS
from fastattn.kernels._configs import AotCase, select_compiled, shared_memory_limit


def _mark_kept(work: list, records: list) -> None:
    """Set ``kept`` on each record: whether :func:`select_compiled` keeps its case among its
    group's candidates on that arch (cases without a group are always kept)."""
    groups: dict = {}
    for i, ((case, arch), r) in enumerate(zip(work, records)):
        r["kept"] = True
        if case.group is not None:
            groups.setdefault((case.group, arch), []).append(i)
    for (_, arch), idx in groups.items():
        reports = [None if records[i]["error"] else (records[i]["shared_memory_bytes"], records[i]["spill_bytes"])
                   for i in idx]
        chosen = set(select_compiled(idx, reports, shared_memory_limit(arch)))
        for i in idx:
            records[i]["kept"] = i in chosen


def _case_identity(case: AotCase) -> tuple:
    return case.kernel, tuple(sorted(case.config.items())), case.num_warps, case.num_stages


def discover_cases(stratified: bool = False) -> list[AotCase]:
    """Every ``aot_cases()`` of the kernel modules of :mod:`fastattn.kernels` (each case knows its origin).

    ``stratified``: the subset the default test run compiles, within CI's time budget on a cold
    cache: where a module offers one (``aot_cases(stratified=True)``: every kernel, variant and
    head-dim tile at least once, chosen deterministically), only those cases; and each
    specialisation on one arch, alternating sm_80 / sm_90 in declaration order within each
    kernel (:func:`_one_arch_each`), so that every kernel still meets both archs. A module keeps
    a case on every arch where its ``aot_on_every_arch(case)`` says so (the tiles whose survival
    is pinned per arch). The full set (every specialisation on every arch: many minutes more on
    two cores, cold) is for ``info --kernels``, ``benchmarks/static_analysis.py`` and the slow
    tests."""
    cases = []
    for info in pkgutil.iter_modules(fastattn.kernels.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"fastattn.kernels.{info.name}")
        if not hasattr(module, "aot_cases"):
            continue
        found = [replace(c, origin=(info.name, i)) for i, c in enumerate(module.aot_cases())]
        if stratified:
            if "stratified" in inspect.signature(module.aot_cases).parameters:
                keep = {_case_identity(c) for c in module.aot_cases(stratified=True)}
                found = [c for c in found if _case_identity(c) in keep]
            found = _one_arch_each(found, getattr(module, "aot_on_every_arch", lambda case: False))
        cases.extend(found)
    return cases


def _one_arch_each(cases: list[AotCase], on_every_arch, archs=(80, 90)) -> list[AotCase]:
    """``cases`` with each specialisation (a ``group`` of candidates, or an ungrouped case) given
    one arch of ``archs`` in turn, per kernel in declaration order. Untouched: cases already
    restricted to some archs, those ``on_every_arch`` keeps, and kernels of one specialisation."""
    turn: dict[str, dict] = {}
    for c in cases:
        if c.archs is None and not on_every_arch(c):
            specs = turn.setdefault(c.kernel, {})
            specs.setdefault(c.group if c.group is not None else _case_identity(c), len(specs))
    out = []
    for c in cases:
        specs = turn.get(c.kernel, {})
        key = c.group if c.group is not None else _case_identity(c)
        if key in specs and len(specs) > 1:
            c = replace(c, archs=(archs[specs[key] % len(archs)],))
        out.append(c)
    return out


def _compile_with_ptxas_log(src, arch: int, options: dict):
    """``triton.compile`` of ``src`` for ``arch``, and the ``ptxas -v`` report of the cubin it
    assembled (Triton prints it under ``knobs.nvidia.dump_ptxas_log``; empty when Triton took the
    kernel from its cache and ran no ptxas)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    previous = knobs.nvidia.dump_ptxas_log
    out = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(out):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    finally:
        knobs.nvidia.dump_ptxas_log = previous
    log = out.getvalue()
    return compiled, log if "Used " in log else ""


def _parse_ptxas_log(log: str) -> tuple[int, int]:
    """(registers, spill bytes: stores + loads) from a ``ptxas -v`` report."""
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return regs, spills


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from ``ptxas -v`` of Triton's own ptxas for ``arch``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([ptxas, "-v", "--regAllocOptLevel=2", f"--gpu-name={sm_arch_from_capability(arch)}",
                              str(src), "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed: {log[-2000:]}")
    return _parse_ptxas_log(log)


def occupancy(arch: int, registers: int, shared_bytes: int, num_warps: int) -> float:
    """Resident warps per SM over the arch's maximum, from registers, shared memory and warps."""
    lim = ARCH_LIMITS[arch]
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = lim.registers // (regs_per_warp * num_warps)
    by_smem = lim.smem_per_sm // (shared_bytes + lim.smem_reserved_per_block) if shared_bytes else lim.max_blocks
    blocks = min(by_regs, by_smem, lim.max_warps // num_warps, lim.max_blocks)
    return round(blocks * num_warps / lim.max_warps, 4)


def _compile_one(case: AotCase, arch: int, artefacts: Optional[Path] = None) -> dict:
    from triton.compiler import ASTSource

    record = dict(kernel=case.kernel, backend="triton", config=dict(case.config, num_warps=case.num_warps,
                  num_stages=case.num_stages), arch=f"sm_{arch}", registers=None, shared_memory_bytes=None,
                  spill_bytes=None, occupancy=None, shared_memory_limit=shared_memory_limit(arch),
                  fits_shared_memory=None, error=None)
    try:
        names = case.fn.arg_names
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16 if n in names}
        src = ASTSource(case.fn, dict(case.signature), dict(case.constexprs), attrs)
        options = dict(num_warps=case.num_warps, num_stages=case.num_stages)
        if case.maxnreg is not None:
            options["maxnreg"] = case.maxnreg
        compiled, ptxas_log = _compile_with_ptxas_log(src, arch, options)
        if artefacts is not None:
            _write_artefacts(artefacts, compiled.asm["cubin"], compiled.asm["ttir"])
        shared = int(compiled.metadata.shared)
        # Triton ran ptxas -v for this very cubin: read its report rather than assembling the
        # PTX a second time (a third of a cold compile); a compile Triton served from its own
        # cache ran no ptxas, so that one is assembled here.
        regs, spills = _parse_ptxas_log(ptxas_log) if ptxas_log else _ptxas_report(compiled.asm["ptx"], arch)
        record.update(registers=regs, shared_memory_bytes=shared, spill_bytes=spills,
                      occupancy=occupancy(arch, regs, shared, case.num_warps),
                      fits_shared_memory=shared <= shared_memory_limit(arch))
    except Exception as exc:  # reported per record, so one bad config does not hide the others
        record["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
    return record


def _write_artefacts(stem: Path, cubin: bytes, ttir: str) -> None:
    """The cubin and gzipped Triton IR next to the record (best effort: a cache that cannot be
    written only costs a recompile when the artefacts are asked for)."""
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".cubin", cubin), (".ttir.gz", gzip.compress(ttir.encode(), 6))):
            tmp = stem.with_name(f"{stem.name}{suffix}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(stem.with_name(stem.name + suffix))
    except OSError:
        pass


def artefact_paths(case: AotCase, arch: int) -> dict:
    """Where the cache keeps the compiled ``cubin`` and the gzipped Triton IR (``ttir``) of
    ``case`` on ``arch`` (present once :func:`kernel_reports` has compiled it)."""
    stem = _cache_path(case, arch).with_suffix("")
    return {"cubin": str(stem.with_name(stem.name + ".cubin")), "ttir": str(stem.with_name(stem.name + ".ttir.gz"))}


def _cached(case: AotCase, arch: int, artefacts: bool) -> bool:
    if not _cache_path(case, arch).exists():
        return False
    return not artefacts or all(Path(p).exists() for p in artefact_paths(case, arch).values())


def _cache_path(case: AotCase, arch: int) -> Path:
    import triton

    return cache_dir("aot") / f"{case.key()}-sm{arch}-triton{triton.__version__}.json"


_POOL_WORK: list = []  # (case, arch) pairs handed to forked workers by index (JIT functions don't pickle)
_POOL_ARTEFACTS: list = [False]  # whether the forked workers must also (re)write the artefacts


def _compile_index(i: int) -> dict:
    return _compile_cached(_POOL_WORK[i], _POOL_ARTEFACTS[0])


def _compile_cached(job, artefacts: bool = False) -> dict:
    case, arch = job
    path = _cache_path(case, arch)
    record = read_json(path) if _cached(case, arch, artefacts) else None
    if record is not None:
        return dict(record, **artefact_paths(case, arch)) if artefacts else record
    # The artefacts are written on every compile (cheap next to the compile), so that a later
    # machine-code analysis finds them.
    record = _compile_one(case, arch, artefacts=path.with_suffix(""))
    if record["error"] is None:
        write_json(path, record)
    return dict(record, **artefact_paths(case, arch)) if artefacts else record


def _interpreted(cases: list[AotCase]) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return any(isinstance(c.fn, InterpretedFunction) for c in cases)


def _reports_in_subprocess(work: list, jobs: Optional[int], artefacts: bool = False) -> list[dict]:
    """Under TRITON_INTERPRET=1 the kernels in this process are interpreter objects that cannot be
    compiled: compile in a fresh interpreter-free Python, naming the cases by their origin."""
    if any(c.origin is None for c, _ in work):
        raise RuntimeError("under TRITON_INTERPRET=1 only cases from discover_cases() can be compiled")
    payload = json.dumps({"work": [[list(c.origin), a] for c, a in work], "jobs": jobs, "artefacts": artefacts})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", __name__], input=payload, capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ahead-of-time compile subprocess failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    by_origin = {c.origin: c for c in discover_cases()}
    work = [(by_origin[tuple(o)], a) for o, a in request["work"]]
    json.dump(_reports(work, request["jobs"], request.get("artefacts", False)), sys.stdout)


def kernel_reports(archs: Iterable[int | str] = (80, 90), cases: Optional[list[AotCase]] = None,
                   jobs: Optional[int] = None, artefacts: bool = False, pruned: bool = False) -> list[dict]:
    """Compile every AOT case (default: all of :func:`discover_cases`) for each arch and report it.

    ``archs``: compute capabilities (80, "sm_90", ...). Returns one record per (case, arch)
    the case is kept for, in a stable order: candidates of one specialisation (a ``group``) that
    the compiler's report rules out (:func:`select_compiled`) are left out unless ``pruned``,
    which returns them too, each record saying ``kept``. Compiles in ``jobs`` worker processes
    (default: the CPU count) and caches results on disk. With ``artefacts``, each record also
    carries ``cubin`` and ``ttir`` (paths of the cached cubin and gzipped Triton IR, see
    :func:`artefact_paths`), recompiling the cases whose artefacts are not cached.
    """
    archs = [int(str(a).replace("sm_", "").rstrip("a")) for a in archs]
    cases = discover_cases() if cases is None else cases
    work = [(c, a) for c in cases for a in archs if c.archs is None or a in c.archs]
    if _interpreted(cases):
        records = _reports_in_subprocess(work, jobs, artefacts)
    else:
        records = _reports(work, jobs, artefacts)
    _mark_kept(work, records)
    return records if pruned else [r for r in records if r["kept"]]


def _reports(work: list, jobs: Optional[int], artefacts: bool = False) -> list[dict]:
    todo = [w for w in work if not _cached(*w, artefacts)]
    jobs = jobs or os.cpu_count() or 1
    if len(todo) > 1 and jobs > 1:
        _POOL_WORK[:] = todo
        _POOL_ARTEFACTS[0] = artefacts
        try:
            with multiprocessing.get_context("fork").Pool(min(jobs, len(todo))) as pool:
                pool.map(_compile_index, range(len(todo)), chunksize=1)
        finally:
            _POOL_WORK.clear()
    return [_compile_cached(w, artefacts) for w in work]


def format_table(records: list[dict]) -> str:
    """The records as a fixed-width text table."""
    head = ("kernel", "arch", "config", "regs", "smem", "spill", "occ")
    rows = [head] + [
        (r["kernel"], r["arch"], " ".join(f"{k}={v}" for k, v in r["config"].items()),
         str(r["registers"]), str(r["shared_memory_bytes"]), str(r["spill_bytes"]),
         "-" if r["occupancy"] is None else f"{r['occupancy']:.2f}")
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


if __name__ == "__main__":
    _main()
