// Driver of the attention forward's planted-bug variants (csrc/sim/planted.py), and, built
// from the real sources, their control. Runs flash_fwd_kernel<__half, 64, false> on a
// GQA problem with two query blocks and three key tiles (so that every stage of the
// double-buffered cp.async ring is used) and checks it against a float64 reference by
// flash-attn's error-ratio rule. Prints PASS and exits 0, or names the kernel and exits 1;
// the simulator's own checks abort before that when they catch the bug.
#include <cstdio>

#include "../attention_ref.h"
#include "attention/flash_fwd.cuh"

int main() {
  using T = __half;
  fastattn::simtest::AttnProblem<T> prob(70, 150, false, false, 7);
  // The one instantiation, launched directly (the dispatcher's checks are not under test here).
  fastattn::cuda::attn::run_flash_fwd<T, 64, false>(prob.fwd_params(), nullptr);
  int bad = 0;
  const double ratio = prob.fwd_worst_ratio(&bad);
  if (bad > 0 || !(ratio <= 1.0)) {
    std::printf("FAIL flash_fwd_kernel<__half, 64, false>: %d NaN outputs or wrong lse, error %g times the bound\n",
                bad, ratio);
    return 1;
  }
  std::printf("PASS flash_fwd_kernel<__half, 64, false>: error %g times the bound\n", ratio);
  return 0;
}
