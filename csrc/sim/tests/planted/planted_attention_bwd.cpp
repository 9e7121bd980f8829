// Driver of the attention backward's planted-bug variants (csrc/sim/planted.py), and, built
// from the real sources, their control. Runs the backward for fp16 at head dim 64 (the dK/dV
// kernel flash_bwd_dkdv_kernel<__half, 64, 64> with dq atomics, then the deterministic dq pass) on
// a GQA problem with two key blocks and three query blocks, and checks the gradients against
// a float64 reference by flash-attn's error-ratio rule. Prints PASS and exits 0, or names the
// kernel and exits 1; the simulator's own checks abort before that when they catch the bug.
#include <cstdio>

#include "../attention_ref.h"
#include "attention/bwd_params.h"
#include "attention/flash_bwd.cuh"

int main() {
  using T = __half;
  for (const bool deterministic : {false, true}) {
    fastattn::simtest::AttnProblem<T> prob(150, 100, true, false, 7);
    // The one instantiation, launched directly (the dispatcher's checks are not under test here).
    const fastattn::cuda::AttnBwdParams p = fastattn::cuda::attn::prepare_bwd_params(prob.bwd_params(deterministic));
    fastattn::cuda::attn::run_flash_bwd<T, 64>(p, nullptr);
    int nan = 0;
    const double ratio = prob.bwd_worst_ratio(&nan);
    const char* which = deterministic ? "deterministic dq" : "atomic dq";
    if (nan > 0 || !(ratio <= 1.0)) {
      std::printf("FAIL flash_bwd_dkdv_kernel<__half, 64, 64> (%s): %d NaN gradients, error %g times the bound\n", which,
                  nan, ratio);
      return 1;
    }
    std::printf("PASS flash_bwd_dkdv_kernel<__half, 64, 64> (%s): error %g times the bound\n", which, ratio);
  }
  return 0;
}
