"""Main-loop machine-code analysis of every kernel record (``info --kernels --sass``).

:func:`analyse` takes the kernel records of :mod:`fastattn.buildcheck.kernel_report` that carry their
compiled artefacts (``cubin``; Triton: ``ttir``; CUDA C++: ``mangled``), disassembles each
cubin (:mod:`fastattn.buildcheck.sass`), and attaches to every record a ``sass`` dict:

* ``arch``: the throughput table used ("sm_80", "sm_90a", ...); ``loops``: loops found in the
  kernel; ``main_loops``: one *view* per main loop and path (see :func:`fastattn.buildcheck.sass.analyse_function`),
  each with the per-warp, per-iteration counts (:data:`fastattn.buildcheck.sass.CATEGORIES`, ``instructions``,
  ``ex2``, ``mma_flops``, ``shared_bytes``, ``global_load_bytes``, ``local_bytes``), ``useful_flops``
  (the tile's FLOPs per iteration: from Triton's IR, or the CUDA C++ tile traits), the derived
  figures (``non_mma_per_4096_flops``, ``shared_bytes_per_mma_flop``, ``redundancy``) and the
  static ceilings (:mod:`fastattn.buildcheck.sass_ceiling`); ``label``/``masked`` tell a causal kernel's
  masked and unmasked loops (or paths) apart;
* ``static_ceiling``: the ceiling of the steady-state view (the first view that is not the
  masked variant of another: a causal kernel's unmasked loop or path; else the first main
  loop's longest path), ``masked_static_ceiling`` (lowest over masked views, or None);
* ``error``: None, or why the record could not be analysed.

Every number is a static upper bound from instruction counts ("static ceiling"), not a
measured speed. Analyses are cached per cubin under ``$FASTATTN_CACHE_DIR/sass`` (or
``~/.cache/fastattn/sass``), keyed by the cubin's hash and this analyzer's source.
"""
from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from fastattn.buildcheck import sass, sass_ceiling
from fastattn.buildcheck._cache import cache_dir, read_json, write_json

VIEW_FIELDS = ("loop", "path", "label", "masked", "start", "end", *sass.CATEGORIES, "instructions", "ex2",
               "mma_flops", "mma_flops_by_kind", "unknown_mma", "shared_bytes", "global_load_bytes", "local_bytes",
               "useful_flops", "mma_flops_per_cta", "redundancy", "non_mma_per_4096_flops",
               "shared_bytes_per_mma_flop", *sass_ceiling.BOUNDS, "static_ceiling")
"""The fields of each main-loop view, in order."""

SASS_FIELDS = ("arch", "tool", "loops", "main_loops", "static_ceiling", "masked_static_ceiling", "error")
"""The fields of a record's ``sass`` dict."""

ARTEFACT_KEYS = ("cubin", "ttir", "mangled")


def _analyser_hash() -> str:
    h = hashlib.sha256()
    h.update(Path(sass.__file__).read_bytes())
    return h.hexdigest()[:12]


def analyse_cubin(path: str, tool: Optional[str] = None) -> dict:
    """``{function name: sass.analyse_function(...)}`` for every function of the cubin at
    ``path``, cached by the cubin's content and this analyzer's source."""
    data = Path(path).read_bytes()
    key = hashlib.sha256(data).hexdigest()[:24] + "-" + _analyser_hash()
    cache = cache_dir("sass") / f"{key}.json"
    cached = read_json(cache)
    if cached is not None:
        return cached
    result = {name: sass.analyse_function(ins) for name, ins in sass.disassemble(data, tool).items()}
    write_json(cache, result)
    return result


def _num_warps(record: dict) -> Optional[int]:
    config = record.get("config")
    if isinstance(config, dict) and config.get("num_warps"):
        return int(config["num_warps"])
    threads = record.get("threads_per_block")
    return max(1, int(threads) // 32) if threads else None


def _cuda_useful(record: dict, tiles: dict) -> list:
    """Useful FLOPs per iteration of a CUDA C++ kernel's main loop(s) ([] when unknown).

    The attention forward does S = Q K^T and O += P V for a kBlockM x kBlockN tile of head dim
    D per key step: 4 * kBlockM * kBlockN * D FLOPs."""
    if record["kernel"] == "flash_fwd_kernel":
        m = re.search(r",\s*(\d+)\s*,", str(record.get("config")))
        if m and int(m.group(1)) in tiles:
            d = int(m.group(1))
            bm, bn, _ = tiles[d]
            return [4 * bm * bn * d]
    return []


def _useful_per_loop(n_loops: int, useful: list) -> list:
    """Pair the program's dot loops (program order) with the machine code's main loops
    (address order): one for one when the counts agree, else one value for all when every
    program loop has the same FLOPs, else unknown."""
    if len(useful) == n_loops:
        return list(useful)
    if useful and len(set(useful)) == 1:
        return [useful[0]] * n_loops
    return [None] * n_loops


def _pick_function(functions: dict, record: dict) -> Optional[str]:
    name = record.get("mangled")
    if name:
        return name if name in functions else None
    if not functions:
        return None
    return max(functions, key=lambda f: functions[f]["instructions"])  # a Triton cubin holds one kernel


def _attach(record: dict, functions: Optional[dict], error: Optional[str], tiles: dict, tool: str) -> None:
    arch = record.get("arch")
    try:
        table = sass_ceiling.throughput(arch).arch
    except (KeyError, ValueError):
        table = None
    out = {"arch": table, "tool": tool, "loops": None, "main_loops": [], "static_ceiling": None,
           "masked_static_ceiling": None, "error": error}
    record["sass"] = out
    if error is not None:
        return
    if table is None:
        out["error"] = f"no throughput table for {arch}"
        return
    fname = _pick_function(functions, record)
    if fname is None:
        out["error"] = f"function {record.get('mangled')} not in the cubin"
        return
    analysis = functions[fname]
    out["loops"] = analysis["loops"]
    views = [dict(v) for v in analysis["main_loops"]]
    if not views:
        return
    warps = _num_warps(record)
    if record.get("backend") == "cuda":
        useful = _cuda_useful(record, tiles)
    else:
        useful = [lp["useful_flops"] for lp in _ttir_loops(record.get("ttir"))]
    per_loop = _useful_per_loop(len({v["loop"] for v in views}), useful)
    sass.label_views(views)
    for v in views:
        v["useful_flops"] = per_loop[v["loop"]]
        v.update(sass_ceiling.derived(v, warps or 1, v["useful_flops"]))
        v.update(sass_ceiling.ceilings(v, arch, warps or 1, v["useful_flops"]))
    out["main_loops"] = [{k: v.get(k) for k in VIEW_FIELDS} for v in views]
    # The steady state: the first view that is not the masked variant of another (a causal
    # kernel's unmasked loop or path; else the first loop, longest path).
    steady = [v for v in out["main_loops"] if not v["masked"]]
    out["static_ceiling"] = steady[0]["static_ceiling"]
    masked = [v["static_ceiling"] for v in out["main_loops"] if v["masked"] and v["static_ceiling"] is not None]
    out["masked_static_ceiling"] = min(masked) if masked else None


def _ttir_loops(path: Optional[str]) -> list:
    if not path or not Path(path).is_file():
        return []
    return sass.ttir_dot_loops(gzip.decompress(Path(path).read_bytes()).decode())


def analyse(records: list, jobs: Optional[int] = None) -> None:
    """Attach ``sass`` (see the module docstring) to every record, in place, and drop the
    artefact paths (``cubin``, ``ttir``, ``mangled``) from them. A record without a cubin, or
    whose cubin fails to disassemble, gets ``sass.error`` saying why."""
    tool = sass.nvdisasm_path()
    version = sass.nvdisasm_version(tool) if tool else None
    cubins = sorted({r["cubin"] for r in records if r.get("cubin") and Path(r["cubin"]).is_file()})
    results: dict = {}
    if tool is not None and cubins:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            futures = {c: pool.submit(analyse_cubin, c, tool) for c in cubins}
            for c, fut in futures.items():
                try:
                    results[c] = (fut.result(), None)
                except Exception as exc:  # noqa: BLE001  (reported per record)
                    results[c] = (None, f"{type(exc).__name__}: {exc}"[:500])
    tiles = {}
    heads = {int(m.group(1)) for r in records if r.get("kernel") == "flash_fwd_kernel"
             for m in [re.search(r",\s*(\d+)\s*,", str(r.get("config")))] if m}
    tiles_error = None
    if heads:
        try:
            from fastattn.buildcheck import ptxas

            tiles = ptxas.attention_tiles(heads)
        except Exception as exc:  # noqa: BLE001  (redundancy unknown, the counts still stand)
            tiles_error = f"{type(exc).__name__}: {exc}"
    for r in records:
        if r.get("error"):
            error = "not compiled"
        elif tool is None:
            error = "nvdisasm not found (install Triton, or the CUDA toolkit's nvdisasm)"
        elif not r.get("cubin"):
            error = "no cubin for this record"
        elif r["cubin"] not in results:
            error = f"cubin missing: {r['cubin']}"
        else:
            error = results[r["cubin"]][1]
        _attach(r, results.get(r.get("cubin"), (None, None))[0], error, tiles, version)
        if tiles_error and r.get("kernel") == "flash_fwd_kernel":
            r["sass"]["tile_error"] = tiles_error
        for key in ARTEFACT_KEYS:
            r.pop(key, None)


# --------------------------------------------------------------------------- tables

TABLE_HEADER = ("backend", "kernel", "config", "arch", "main loop", "MMA/warp", "redund.", "non-MMA/4kF",
                "smem B/F", "MUFU", "SEL", "local B", "issue", "smem", "mufu", "fp32", "static ceiling")


def _fmt(value, spec="") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def _config_text(config) -> str:
    if isinstance(config, dict):
        return ",".join(f"{k}={v}" for k, v in config.items())
    return "" if config is None else str(config)


def rows(records: list, config_text=_config_text) -> list:
    """One table row (:data:`TABLE_HEADER`) per main-loop view of each record."""
    out = []
    for r in records:
        s = r.get("sass") or {}
        for v in s.get("main_loops") or []:
            out.append((r["backend"], r["kernel"], config_text(r["config"]), s.get("arch") or str(r["arch"]),
                        v["label"], _fmt(v["mma"]), _fmt(v["redundancy"], ".2f"), _fmt(v["non_mma_per_4096_flops"], ".1f"),
                        _fmt(v["shared_bytes_per_mma_flop"], ".3f"), _fmt(v["mufu"]), _fmt(v["select"]),
                        _fmt(int(v["local_bytes"])), *(_fmt(v[b], ".0%") for b in sass_ceiling.BOUNDS),
                        _fmt(v["static_ceiling"], ".0%")))
    return out


def format_table(records: list) -> str:
    """The main-loop views of ``records`` as an aligned text table, then the records with no
    MMA loop and those that could not be analysed; labelled as static ceilings."""
    from fastattn.text_table import render_table

    ordered = sorted(records, key=lambda r: (r["backend"], r["kernel"], _config_text(r["config"]), str(r["arch"])))
    body = rows(ordered)
    lines = ["Main-loop machine code per warp and iteration; ceilings are STATIC upper bounds on the fraction of "
             "tensor-core peak (not measured speed).", render_table(TABLE_HEADER, body) if body else "(no MMA loops)"]
    plain: dict = {}
    for r in records:
        s = r.get("sass") or {}
        if s.get("error") is None and not s.get("main_loops"):
            plain[r["kernel"]] = plain.get(r["kernel"], 0) + 1
    if plain:
        lines.append("records with no MMA loop (CUDA-core code: elementwise, reductions, fp32 dots without tensor "
                     "cores): " + ", ".join(f"{k} ({n})" for k, n in sorted(plain.items())))
    failed = [r for r in records if (r.get("sass") or {}).get("error")]
    for r in failed:
        lines.append(f"  not analysed: {r['backend']} {r['kernel']} [{_config_text(r['config'])}] {r['arch']}: "
                     f"{r['sass']['error']}")
    return "\n".join(lines)
