"""Static resource report of the CUDA C++ kernels: ``nvcc -Xptxas -v`` per kernel and arch.

Every ``.cu`` file of ``csrc/cuda`` is compiled to a cubin for each target arch (no GPU
needed) and ptxas's report is parsed into one record per (kernel instantiation, arch):
``kernel``, ``config`` (the template arguments), ``arch``, ``registers``,
``shared_memory_bytes`` (static plus the most dynamic shared memory its launcher asks
for), ``spill_bytes`` (spill stores plus loads), ``stack_bytes``, ``threads_per_block``.
:mod:`fastattn.buildcheck.kernel_report` merges these with the Triton records for
``python -m fastattn info --kernels``.

Needs the source tree (an editable install or a checkout) and ``nvcc``. Results are
cached per source hash, arch and nvcc version under ``$XDG_CACHE_HOME/fastattn/ptxas``,
with the cubins (``kernel_reports(..., artefacts=True)`` hands out their paths for
machine-code analysis, :mod:`fastattn.buildcheck.sass`).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional

ARCHS = ("80", "86", "89", "90a")
"""The archs the CUDA C++ kernels ship for (csrc/CMakeLists.txt's default)."""

CSRC = Path(__file__).resolve().parents[2] / "csrc"

# Launch facts ptxas cannot see: the largest block and dynamic shared memory each launcher
# uses (csrc/cuda/*/*.cu). Keys are kernel names without namespace or template arguments.
LAUNCH = {
    "gated_act_fwd_kernel": (256, 0),
    "gated_act_bwd_kernel": (256, 0),
    "bias_gelu_fwd_kernel": (256, 0),
    "bias_gelu_bwd_kernel": (256, 0),
    "scaled_masked_softmax_fwd_kernel": (256, 16384 * 4),  # the 16k row as float
    "scaled_masked_softmax_bwd_kernel": (256, 0),
    "kvcache_append_kernel": (128, 0),
    "split_kv_decode_kernel": (128, 0),
    "split_kv_combine_kernel": (128, 0),
    "arch_probe_kernel": (1, 0),  # csrc/cuda/info.cu
    # 4 warps; dynamic smem by head dim 64/128/256 = 40/80/64 KB (kernel_traits.cuh): the
    # largest is used for every instantiation, so its occupancy is a lower bound.
    "flash_fwd_kernel": (128, 81920),
}


_ACT_NAMES = {"(Act)0": "silu", "(Act)1": "gelu", "(Act)2": "gelu_tanh"}  # activation_math.cuh
_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def nvcc_path() -> Optional[str]:
    """nvcc from $CUDACXX, PATH or /usr/local/cuda, or None."""
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def parse(report: str) -> list[dict]:
    """Records from ptxas ``-v`` output (any number of entry functions and archs)."""
    records, cur = [], None
    for line in report.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2).replace("sm_", ""), "registers": 0,
                   "static_smem": 0, "stack_bytes": 0, "spill_bytes": 0}
            records.append(cur)
            continue
        if cur is None:
            continue
        m = _PROPS.search(line)
        if m:
            cur["stack_bytes"] = int(m.group(1))
            cur["spill_bytes"] = int(m.group(2)) + int(m.group(3))
        m = _USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["static_smem"] = int(s.group(1)) if s else 0
    return records


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else names


def _split_name(demangled: str) -> tuple[str, str]:
    """("gated_act_fwd_kernel", "__half, (fastattn::cuda::Act)0") from a demangled signature."""
    demangled = demangled.replace("(anonymous namespace)::", "")
    head = demangled.split("(")[0] if "<" not in demangled.split("(")[0] else demangled
    lt = head.find("<")
    if lt < 0:
        return head.split("::")[-1].strip(), ""
    depth, end = 0, lt
    for i in range(lt, len(head)):
        depth += head[i] == "<"
        depth -= head[i] == ">"
        if depth == 0:
            end = i
            break
    config = head[lt + 1 : end].replace("fastattn::cuda::", "")
    for code, name in _ACT_NAMES.items():
        config = config.replace(code, name)
    return head[:lt].split("::")[-1].strip(), config


def sources() -> list[Path]:
    """Every CUDA translation unit of csrc/cuda."""
    return sorted((CSRC / "cuda").rglob("*.cu"))


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted([*CSRC.joinpath("cuda").rglob("*"), *CSRC.joinpath("common").rglob("*")]):
        if p.is_file():
            h.update(str(p.relative_to(CSRC)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _compile(nvcc: str, src: Path, arch: str, cubin: Optional[Path] = None) -> str:
    """ptxas's ``-v`` report of ``src`` for ``arch``; the cubin is kept at ``cubin`` if given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k.cubin"
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "--expt-relaxed-constexpr", "-Xptxas", "-v",
               "-I", str(CSRC), "-o", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed for {src.name} sm_{arch}:\n{proc.stderr[-4000:]}")
        if cubin is not None:
            cubin.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out, cubin)
        return proc.stdout + proc.stderr


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastattn" / "ptxas"


def _cubin_name(src: Path) -> str:
    return str(src.relative_to(CSRC)).replace("/", "__").removesuffix(".cu") + ".cubin"


def compile_reports(archs: Iterable = ARCHS, jobs: Optional[int] = None, artefacts: bool = False) -> list[dict]:
    """Compile every csrc/cuda source for ``archs`` and return the parsed records (source by
    source, each source's archs in the order given). Cached per arch; with ``artefacts``
    each record also has ``cubin``, the path of its source's cached cubin for its arch."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDACXX or put it on PATH)")
    if not CSRC.joinpath("cuda").is_dir():
        raise RuntimeError(f"the CUDA sources are not here ({CSRC / 'cuda'}): use a source checkout")
    archs = [_arch_name(a) for a in archs]
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    this = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]  # parser changes invalidate
    tree = _source_hash()
    srcs = sources()
    by_arch = {}
    for arch in archs:
        key = hashlib.sha256(f"{tree}|{this}|{arch}|{version}".encode()).hexdigest()[:24]
        cache = _cache_dir() / f"{key}-sm_{arch}.json"
        cubins = _cache_dir() / f"{key}-sm_{arch}"
        cached = cache.is_file() and (not artefacts or all((cubins / _cubin_name(s)).is_file() for s in srcs))
        records = json.loads(cache.read_text()) if cached else _compile_arch(nvcc, srcs, arch, cubins, jobs)
        if not cached:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(records))
        for rec in records:
            if artefacts:
                rec["cubin"] = str(cubins / _cubin_name(CSRC / rec["source"]))
        by_arch[arch] = records
    order = {str(src.relative_to(CSRC)): i for i, src in enumerate(srcs)}
    out = [r for arch in archs for r in by_arch[arch]]
    return sorted(out, key=lambda r: (order.get(r["source"], len(order)), archs.index(r["arch"])))


def _compile_arch(nvcc: str, srcs: list, arch: str, cubins: Path, jobs: Optional[int]) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        reports = list(pool.map(lambda src: (src, _compile(nvcc, src, arch, cubins / _cubin_name(src))), srcs))
    records = []
    for src, text in reports:
        for rec in parse(text):
            rec["source"] = str(src.relative_to(CSRC))
            records.append(rec)
    for rec, name in zip(records, _demangle([r["mangled"] for r in records])):
        rec["kernel"], rec["config"] = _split_name(name)
        threads, dyn = LAUNCH.get(rec["kernel"], (None, 0))
        rec["threads_per_block"] = threads
        rec["shared_memory_bytes"] = rec["static_smem"] + dyn
    return records


def _arch_name(arch) -> str:
    """"90a" for 90 / "90" / "sm_90a" (sm_90 ships as the arch-specific sm_90a), "80" for 80."""
    text = str(arch).lower().replace("sm_", "")
    return "90a" if text in ("90", "90a") else text


def kernel_reports(archs: Iterable = ARCHS, artefacts: bool = False) -> list[dict]:
    """Records for :mod:`fastattn.buildcheck.kernel_report` (one per kernel instantiation and arch).

    With ``artefacts``, each record also has ``cubin`` (the path of the cached cubin holding
    the kernel) and ``mangled`` (its symbol there)."""
    out = []
    for r in compile_reports(archs, artefacts=artefacts):
        out.append({"kernel": r["kernel"], "backend": "cuda", "config": r["config"], "arch": r["arch"],
                    "registers": r["registers"], "shared_memory_bytes": r["shared_memory_bytes"],
                    "spill_bytes": r["spill_bytes"], "threads_per_block": r["threads_per_block"],
                    "stack_bytes": r["stack_bytes"], "source": r["source"]})
        if artefacts:
            out[-1].update(cubin=r["cubin"], mangled=r["mangled"])
    return out


_TRAITS_PROBE = r"""
#include <cstdio>
#include "cuda/attention/kernel_traits.cuh"
template <int D> void show() {
  using T = fastattn::cuda::AttnFwdTraits<D>;
  std::printf("%d %d %d %d\n", T::kHeadDim, T::kBlockM, T::kBlockN, T::kWarps);
}
int main() { CALLS return 0; }
"""


def attention_tiles(head_dims: Iterable[int] = (64, 128, 256)) -> dict:
    """``{head dim: (kBlockM, kBlockN, kWarps)}`` of the CUDA C++ attention forward, read from
    csrc/cuda/attention/kernel_traits.cuh by compiling and running a host-only probe (so the
    tile the machine-code analysis divides by is the one the kernel is built with). Cached per
    header content and nvcc version."""
    dims = sorted({int(d) for d in head_dims})
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found (set CUDACXX or put it on PATH)")
    header = CSRC / "cuda" / "attention" / "kernel_traits.cuh"
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(header.read_bytes() + f"|{dims}|{version}".encode()).hexdigest()[:24]
    cache = _cache_dir() / f"traits-{key}.json"
    if cache.is_file():
        return {int(k): tuple(v) for k, v in json.loads(cache.read_text()).items()}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cu"
        src.write_text(_TRAITS_PROBE.replace("CALLS", "".join(f"show<{d}>();" for d in dims)))
        exe = Path(tmp) / "probe"
        proc = subprocess.run([nvcc, "-std=c++17", "-I", str(CSRC), "-o", str(exe), str(src)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"the attention traits probe did not compile:\n{proc.stderr[-2000:]}")
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    tiles = {}
    for line in out.splitlines():
        d, bm, bn, warps = (int(x) for x in line.split())
        tiles[d] = (bm, bn, warps)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(tiles))
    return tiles
