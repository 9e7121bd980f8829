// The tensor-core attention backward (csrc/cuda/attention/flash_bwd*.cuh) in the host SIMT
// build: a small GQA case per (dtype, causal alignment, dq path) against a float64 reference
// by flash-attn's error-ratio rule (attention_ref.h). Its main job is the ThreadSanitizer
// run (run_sim_tests.py --tsan): two query blocks per key block and two key blocks exercise
// the double-buffered Q ring, the dO refill, the dS^T exchange in shared memory, the dq
// atomics and, in the deterministic pass, the K/V ring, with every __syncthreads() of both.
#include <cmath>

#include "attention/attention_bwd.h"
#include "attention_ref.h"
#include "check.h"
#include "common/platform.cuh"

namespace {

template <typename T>
void check_attention_bwd(bool causal, bool bottom_right, bool deterministic, int lq, int lk, const char* name) {
  fastattn::simtest::AttnProblem<T> prob(lq, lk, causal, bottom_right, unsigned(lq * 131 + lk));
  fastattn::cuda::attention_bwd(prob.bwd_params(deterministic), nullptr);
  int nan = 0;
  const double ratio = prob.bwd_worst_ratio(&nan);
  FA_CHECK(nan == 0, "%s: %d NaN gradients", name, nan);
  FA_CHECK(ratio <= 1.0, "%s: error %.3g times the error-ratio bound", name, ratio);
}

FA_TEST(attention_bwd_fp16_causal_bottom_right) {
  check_attention_bwd<__half>(true, true, false, 130, 100, "fp16 br atomic");
}
FA_TEST(attention_bwd_bf16_noncausal_deterministic) {
  check_attention_bwd<__nv_bfloat16>(false, false, true, 100, 130, "bf16 full det");
}

}  // namespace
