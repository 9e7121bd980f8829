"""The CPU attention forward kernel of two source revisions, A and B, side by side in one process.

    python benchmarks/bench_cpu_fwd_ab.py --a HEAD~1 [--b WORKTREE] [--isas avx2,avx512,avx512bf16]
        [--cases 1x8x2048x128xf32xfull,...] [--threads 1] [--reps 11] [--json PATH]

As ``bench_cpu_decode_ab.py`` (whose source-tree extraction it shares), for ``attention_fwd``:
each revision's ``csrc/cpu/attention_impl.h`` is compiled by g++ (``-O3 -fopenmp``) once per
instruction set into one C++ driver, each copy in its own namespace, and the driver calls the
forward of A and of B in turns on the same inputs (a change in machine load hits both alike;
the Python extension and torch are not involved). A case ``BxHxLxDxDTxMASK`` is batch, heads,
sequence length (queries = keys), head dim, dtype (``f32`` or ``bf16``) and ``causal`` or
``full``; q, k, v are contiguous ``(B, H, L, D)`` as torch's SDPA takes them.
Printed per case: the medians and fastest calls of A and B, B / A by the medians (below 1: B is
faster), and the largest difference between their outputs; the JSON also holds the medians of
the process CPU time per call (``a_cpu_median_ms``; at 1 thread, the wall time less the waits
for other processes). Correctness is the tests' business
(``tests/test_cpu_attention.py``); this only times.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_decode_ab import ab_arguments, ab_row, build_driver, save_json  # noqa: E402

ISAS = {  # name: (target features, vector bits, VDPBF16PS); as csrc/cpu/attention_<isa>.cpp
    "avx2": ("avx2,fma,f16c,bmi,bmi2", 256, 0),
    "avx512": ("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2", 512, 0),
    "avx512bf16": ("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,bmi,bmi2", 512, 1),
}
DEFAULT_CASES = "1x8x2048x128xf32xfull,1x8x2048x128xf32xcausal,1x8x2048x64xf32xfull," \
                "1x8x2048x64xf32xcausal,1x8x2048x128xbf16xcausal"

DRIVER = r"""
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>
#include "cpu/attention.h"
using fastattn::cpu::AttnParams;
namespace fastattn::cpu {
#define FA_DECL(ns) namespace ns##_a { void attention_fwd(const AttnParams&); } \
                    namespace ns##_b { void attention_fwd(const AttnParams&); }
FA_DECL(avx2) FA_DECL(avx512) FA_DECL(avx512bf16)
}
static uint16_t to_bf16(float x) { uint32_t u; memcpy(&u, &x, 4); return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
static float elem(const std::vector<char>& b, size_t i, bool f32) {
  if (f32) return ((const float*)b.data())[i];
  uint32_t u = (uint32_t)((const uint16_t*)b.data())[i] << 16; float x; memcpy(&x, &u, 4); return x;
}
// argv: isa B H L D f32|bf16 causal|full threads reps
int main(int argc, char** argv) {
  if (argc != 10) return 2;
  const bool f32 = !strcmp(argv[6], "f32");
  const int64_t B = atoll(argv[2]), H = atoll(argv[3]), L = atoll(argv[4]), D = atoll(argv[5]);
  const int threads = atoi(argv[8]), reps = atoi(argv[9]);
  const size_t esz = f32 ? 4 : 2, n = (size_t)B * H * L * D;
  std::vector<char> Q(n * esz), K(n * esz), V(n * esz), O[2] = {std::vector<char>(n * esz), std::vector<char>(n * esz)};
  std::vector<float> lse[2] = {std::vector<float>(B * H * L), std::vector<float>(B * H * L)};
  srand(1);
  for (auto* buf : {&Q, &K, &V})
    for (size_t i = 0; i < n; ++i) {
      const float x = 2.0f * rand() / (float)RAND_MAX - 1.0f;
      if (f32) ((float*)buf->data())[i] = x; else ((uint16_t*)buf->data())[i] = to_bf16(x);
    }
  AttnParams p;
  p.dtype = f32 ? 0 : 2;  // fastattn::DType codes (csrc/common/dtype.h)
  p.batch = B; p.heads_q = H; p.heads_k = H; p.seqlen_q = L; p.seqlen_k = L; p.head_dim = D; p.head_dim_v = D;
  p.q = {Q.data(), H * L * D, L * D, D, 1};
  p.k = {K.data(), H * L * D, L * D, D, 1};
  p.v = {V.data(), H * L * D, L * D, D, 1};
  p.lse_sb = H * L; p.lse_sh = L; p.lse_sl = 1; p.scale = 1.0f / sqrtf((float)D);
  p.causal = !strcmp(argv[7], "causal"); p.num_threads = threads;
  using F = void (*)(const AttnParams&);
  namespace c = fastattn::cpu;
  const F fn[2] = {!strcmp(argv[1], "avx2") ? c::avx2_a::attention_fwd : !strcmp(argv[1], "avx512") ? c::avx512_a::attention_fwd : c::avx512bf16_a::attention_fwd,
                   !strcmp(argv[1], "avx2") ? c::avx2_b::attention_fwd : !strcmp(argv[1], "avx512") ? c::avx512_b::attention_fwd : c::avx512bf16_b::attention_fwd};
  std::vector<double> t[2], cpu[2];  // wall and process CPU time (less sensitive to other processes)
  for (int r = 0; r < reps + 1; ++r)
    for (int w = 0; w < 2; ++w) {
      const int s = (r + w) % 2;  // alternate which goes first
      AttnParams pp = p;
      pp.out = {O[s].data(), H * L * D, L * D, D, 1};
      pp.lse = lse[s].data();
      const std::clock_t c0 = std::clock();
      const auto t0 = std::chrono::steady_clock::now();
      fn[s](pp);
      const auto t1 = std::chrono::steady_clock::now();
      const std::clock_t c1 = std::clock();
      if (r >= 1) {
        t[s].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        cpu[s].push_back(1e3 * (double)(c1 - c0) / CLOCKS_PER_SEC);
      }
    }
  double diff = 0;
  for (size_t i = 0; i < n; ++i) diff = std::max(diff, (double)fabsf(elem(O[0], i, f32) - elem(O[1], i, f32)));
  for (auto* v : {&t[0], &t[1], &cpu[0], &cpu[1]}) std::sort(v->begin(), v->end());
  printf("{\"a_median_ms\": %.3f, \"a_min_ms\": %.3f, \"b_median_ms\": %.3f, \"b_min_ms\": %.3f, \"max_diff\": %.3g, "
         "\"a_cpu_median_ms\": %.3f, \"b_cpu_median_ms\": %.3f}\n",
         t[0][t[0].size() / 2], t[0][0], t[1][t[1].size() / 2], t[1][0], diff, cpu[0][cpu[0].size() / 2], cpu[1][cpu[1].size() / 2]);
}
"""


def build(a: str, b: str, work: Path) -> Path:
    """The driver with the forward kernels of revisions a and b (with symbols, for perf)."""
    units = {isa: f'#define FA_TARGET "{target}"\n#define FA_IMPL "attention_impl.h"\n'
                  f"#define FA_VEC_BITS {bits}\n#define FA_DPBF16 {dp}"
             for isa, (target, bits, dp) in ISAS.items()}
    return build_driver(a, b, work, units, DRIVER, debug=True)


def main() -> None:
    ap = ab_arguments(__doc__, "avx512bf16,avx2", DEFAULT_CASES, "BxHxLxDxDTxMASK", 11)
    ap.add_argument("--keep", help="copy the driver executable here (for perf or objdump)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(args.a, args.b, Path(tmp))
        if args.keep:
            Path(args.keep).write_bytes(exe.read_bytes())
            os.chmod(args.keep, 0o755)
        for isa in args.isas.split(","):
            for threads in args.threads.split(","):
                for case in args.cases.split(","):
                    *dims, dt, mask = case.split("x")
                    rows.append(ab_row([str(exe), isa, *dims, dt, mask, threads, str(args.reps)], "ms",
                                       dict(isa=isa, case=case, threads=int(threads),
                                            load_average=os.getloadavg()[0])))
    save_json(args, rows)

if __name__ == "__main__":
    main()
