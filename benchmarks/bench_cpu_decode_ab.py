"""The CPU decoding kernel of two source revisions, A and B, side by side in one process.

    python benchmarks/bench_cpu_decode_ab.py --a HEAD~1 [--b WORKTREE] [--isas avx2,avx512]
        [--cases 1x8x8x1024x128xf32,...] [--threads 1] [--reps 31] [--layout flash|heads] [--json PATH]

Each revision's ``csrc/cpu`` and ``csrc/common`` (``git archive``; ``WORKTREE`` = the files as
they are now) is compiled by g++ with the flags of the release build (``-O3 -fopenmp``) into a
small C++ driver, each revision's kernels in their own namespaces, so that one process calls
``decode_fwd`` of A and of B in turns on the same inputs (a change in machine load hits both
alike; the Python extension is not involved). A case ``BxHqxHkxLxDxDT`` is batch, query heads,
kv heads, keys, head dim and dtype (``f32`` or ``bf16``): one query row per sequence, every
cache full, in the flash layout ``(B, L, Hk, D)`` that ``flash_attn_with_kvcache`` takes
(``--layout heads``: ``(B, Hk, L, D)``, transformers' cache layout).
Printed per case: the medians and fastest calls of A and B, B / A by the medians (below 1: B is
faster), and the largest difference between their outputs (0 where B sums in the same order).
Correctness is the tests' business (``tests/test_cpu_kvcache.py``); this only times.

The driver fills ``AttnParams`` of ``csrc/cpu/attention.h``, which must be the same in both
revisions (checked).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ISAS = {  # name: (target features, vector bits); as csrc/cpu/decode_<isa>.cpp
    "avx2": ("avx2,fma,f16c,bmi,bmi2", 256),
    "avx512": ("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2", 512),
}
DEFAULT_CASES = "1x8x8x1024x128xf32,8x8x8x1024x128xf32,1x8x8x4096x128xf32,1x8x8x16384x128xf32," \
                "1x8x8x1024x128xbf16,1x8x2x1024x64xf32"

DRIVER = r"""
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "cpu/attention.h"
using fastattn::cpu::AttnParams;
namespace fastattn::cpu {
#define FA_DECL(ns) namespace ns { void decode_fwd(const AttnParams&); }
FA_DECL(avx2_a) FA_DECL(avx2_b) FA_DECL(avx512_a) FA_DECL(avx512_b)
}
static uint16_t to_bf16(float x) { uint32_t u; memcpy(&u, &x, 4); return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
static float elem(const std::vector<char>& b, size_t i, bool f32) {
  if (f32) return ((const float*)b.data())[i];
  uint32_t u = (uint32_t)((const uint16_t*)b.data())[i] << 16; float x; memcpy(&x, &u, 4); return x;
}
// argv: isa B Hq Hk L D f32|bf16 threads reps flash|heads
int main(int argc, char** argv) {
  if (argc != 11) return 2;
  const bool heads_first = !strcmp(argv[10], "heads");
  const bool avx2 = !strcmp(argv[1], "avx2"), f32 = !strcmp(argv[7], "f32");
  const int64_t B = atoll(argv[2]), Hq = atoll(argv[3]), Hk = atoll(argv[4]), L = atoll(argv[5]), D = atoll(argv[6]);
  const int threads = atoi(argv[8]), reps = atoi(argv[9]);
  const size_t esz = f32 ? 4 : 2, nkv = (size_t)B * L * Hk * D, nq = (size_t)B * Hq * D;
  std::vector<char> K(nkv * esz), V(nkv * esz), Q(nq * esz), O[2] = {std::vector<char>(nq * esz), std::vector<char>(nq * esz)};
  std::vector<float> lse[2] = {std::vector<float>(B * Hq), std::vector<float>(B * Hq)};
  srand(1);
  for (auto* buf : {&K, &V, &Q})
    for (size_t i = 0; i < buf->size() / esz; ++i) {
      const float x = 2.0f * rand() / (float)RAND_MAX - 1.0f;
      if (f32) ((float*)buf->data())[i] = x; else ((uint16_t*)buf->data())[i] = to_bf16(x);
    }
  std::vector<int64_t> lens(B, L);
  AttnParams p;
  p.dtype = f32 ? 0 : 2;  // fastattn::DType codes (csrc/common/dtype.h)
  p.batch = B; p.heads_q = Hq; p.heads_k = Hk; p.seqlen_q = 1; p.seqlen_k = L; p.head_dim = D; p.head_dim_v = D;
  p.q = {Q.data(), Hq * D, D, Hq * D, 1};
  // (batch, head, seq, dim) element strides of the cache
  const int64_t sh = heads_first ? L * D : D, sl = heads_first ? D : Hk * D;
  p.k = {K.data(), L * Hk * D, sh, sl, 1};
  p.v = {V.data(), L * Hk * D, sh, sl, 1};
  p.lse_sb = Hq; p.lse_sh = 1; p.lse_sl = 1; p.kv_lens = lens.data(); p.scale = 1.0f / sqrtf((float)D);
  p.causal = true; p.num_threads = threads;
  using F = void (*)(const AttnParams&);
  const F fn[2] = {avx2 ? fastattn::cpu::avx2_a::decode_fwd : fastattn::cpu::avx512_a::decode_fwd,
                   avx2 ? fastattn::cpu::avx2_b::decode_fwd : fastattn::cpu::avx512_b::decode_fwd};
  std::vector<double> t[2];
  for (int r = 0; r < reps + 2; ++r)
    for (int w = 0; w < 2; ++w) {
      const int s = (r + w) % 2;  // alternate which goes first
      AttnParams pp = p;
      pp.out = {O[s].data(), Hq * D, D, Hq * D, 1};
      pp.lse = lse[s].data();
      const auto t0 = std::chrono::steady_clock::now();
      fn[s](pp);
      const auto t1 = std::chrono::steady_clock::now();
      if (r >= 2) t[s].push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
  double diff = 0;
  for (size_t i = 0; i < nq; ++i) diff = std::max(diff, (double)fabsf(elem(O[0], i, f32) - elem(O[1], i, f32)));
  for (auto& v : t) std::sort(v.begin(), v.end());
  printf("{\"a_median_us\": %.2f, \"a_min_us\": %.2f, \"b_median_us\": %.2f, \"b_min_us\": %.2f, \"max_diff\": %.3g}\n",
         t[0][t[0].size() / 2], t[0][0], t[1][t[1].size() / 2], t[1][0], diff);
}
"""


def source_tree(rev: str, dest: Path) -> Path:
    """csrc/cpu and csrc/common of ``rev`` (or of the working tree) under ``dest``; returns the
    directory to pass as -I (the one holding cpu/ and common/)."""
    if rev == "WORKTREE":
        return ROOT / "csrc"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "csrc/cpu", "csrc/common"],
                             check=True, capture_output=True).stdout
    tar = dest / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as f:
        f.extractall(dest, filter="data")
    return dest / "csrc"


def build_driver(a: str, b: str, work: Path, units: dict, driver: str, debug: bool = False) -> Path:
    """A C++ driver linking the kernels of revisions a and b; returns the executable.
    ``units`` maps a unit name to the #defines that precede ``#include "isa_unit.h"`` (its
    FA_ISA gets the suffix _a or _b); ``driver`` is the main program's source."""
    flags = ["-O3", "-DNDEBUG", "-std=c++17", "-fopenmp", "-w"] + (["-g"] if debug else [])
    trees = {"a": source_tree(a, work / "a"), "b": source_tree(b, work / "b")}
    if (trees["a"] / "cpu/attention.h").read_text() != (trees["b"] / "cpu/attention.h").read_text():
        sys.exit("csrc/cpu/attention.h differs between the two revisions: the driver fills one AttnParams")
    objs = []
    for tag, inc in trees.items():
        for name, defines in units.items():
            unit = work / f"unit_{name}_{tag}.cpp"
            unit.write_text(f"{defines}\n#define FA_ISA {name}_{tag}\n#include \"isa_unit.h\"\n")
            objs.append(unit.with_suffix(".o"))
            subprocess.run(["g++", *flags, f"-I{inc / 'cpu'}", f"-I{inc}", "-c", str(unit), "-o", str(objs[-1])],
                           check=True)
    (work / "main.cpp").write_text(driver)
    exe = work / "ab"
    subprocess.run(["g++", *flags, f"-I{trees['b']}", str(work / "main.cpp"), *map(str, objs), "-o", str(exe)],
                   check=True)
    return exe


def build(a: str, b: str, work: Path) -> Path:
    """The driver with the decoding kernels of revisions a and b; returns the executable."""
    units = {isa: f'#define FA_TARGET "{target}"\n#define FA_IMPL "decode_impl.h"\n#define FA_VEC_BITS {bits}'
             for isa, (target, bits) in ISAS.items()}
    return build_driver(a, b, work, units, DRIVER)


def ab_arguments(doc: str, isas: str, cases: str, case_form: str, reps: int) -> argparse.ArgumentParser:
    """The arguments every A/B driver takes: the two revisions, ISAs, cases, threads, reps."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="git revision of A (or WORKTREE)")
    ap.add_argument("--b", default="WORKTREE", help="git revision of B (default: the working tree)")
    ap.add_argument("--isas", default=isas)
    ap.add_argument("--cases", default=cases, help=f"{case_form}, comma separated")
    ap.add_argument("--threads", default="1")
    ap.add_argument("--reps", type=int, default=reps)
    return ap


def main() -> None:
    ap = ab_arguments(__doc__, "avx2,avx512", DEFAULT_CASES, "BxHqxHkxLxDxDT", 31)
    ap.add_argument("--layout", choices=("flash", "heads"), default="flash")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(args.a, args.b, Path(tmp))
        for isa in args.isas.split(","):
            for threads in args.threads.split(","):
                for case in args.cases.split(","):
                    *dims, dt = case.split("x")
                    rows.append(ab_row([str(exe), isa, *dims, dt, threads, str(args.reps), args.layout], "us",
                                       dict(isa=isa, case=case, threads=int(threads), layout=args.layout)))
    save_json(args, rows)


def ab_row(argv: list, unit: str, row: dict) -> dict:
    """Runs the driver (argv), adds its timings (in ``unit``) and B / A to ``row``, prints it."""
    row.update(json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout))
    a, b = row[f"a_median_{unit}"], row[f"b_median_{unit}"]
    row["b_over_a"] = b / a
    print(f"{row['isa']:10s} {row['case']:26s} thr={row['threads']}  A {a:10.2f} {unit} "
          f"(min {row[f'a_min_{unit}']:9.2f})  B {b:10.2f} {unit} (min {row[f'b_min_{unit}']:9.2f})  "
          f"B/A {row['b_over_a']:.3f}  max diff {row['max_diff']:.2g}"
          + (f"  CPU time B/A {row['b_cpu_median_ms'] / row['a_cpu_median_ms']:.3f}" if "a_cpu_median_ms" in row else ""),
          flush=True)
    return row


def save_json(args, rows: list) -> None:
    """The rows with the command, the revisions and the load average, to ``--json`` if given."""
    if args.json:
        record = dict(command=" ".join(sys.argv), a=args.a, b=args.b, load_average=os.getloadavg(), rows=rows)
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
