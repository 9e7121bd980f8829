// The tensor-core attention backward (csrc/cuda/attention/flash_bwd*.cuh) in the host SIMT
// build: a small GQA case per (dtype, causal alignment, dq path) against a float64 reference
// by flash-attn's error-ratio rule (attention_ref.h). Its main job is the ThreadSanitizer
// run (run_sim_tests.py --tsan): two query blocks per key block and two key blocks exercise
// the double-buffered Q ring, the dO refill, the dS^T exchange in shared memory, the dq
// atomics and, in the deterministic pass, the K/V ring, with every __syncthreads() of both;
// at head dim 256 also the dS^T rows two warps of a key group write for every warp's dQ.
#include <cmath>
#include <cstdlib>
#include <string>

#include "attention/attention_bwd.h"
#include "attention_ref.h"
#include "check.h"
#include "common/platform.cuh"

namespace {

template <typename T>
void check_attention_bwd(bool causal, bool bottom_right, bool deterministic, int lq, int lk, const char* name,
                         int head_dim = 64) {
  fastattn::simtest::AttnProblem<T> prob(lq, lk, causal, bottom_right, unsigned(lq * 131 + lk), head_dim);
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

// Head dim 256 splits each key group's dK/dV columns between two warps (bwd_kernel_traits.cuh):
// the tiles of sm_80/sm_90 (64 keys a CTA, 8 warps; dq 32 keys a step) and, with the shared
// memory of sm_86/sm_89, the smaller ones (32 keys, 4 warps; dq 16 keys); 200 runs padded to 256.
// Both dq paths of both tiles.
template <typename T>
void check_attention_bwd_hd256(int smem_per_block, int head_dim, const char* name) {
  setenv("FASTATTN_SIM_SMEM_PER_BLOCK", std::to_string(smem_per_block).c_str(), 1);
  // Sizes small enough for the sanitizer builds, still two key blocks of either tile with a ragged
  // tail, and a ragged last query step (32 rows a step).
  check_attention_bwd<T>(true, true, false, 50, 80, name, head_dim);
  check_attention_bwd<T>(false, false, true, 40, 70, name, head_dim);
  unsetenv("FASTATTN_SIM_SMEM_PER_BLOCK");
}

FA_TEST(attention_bwd_fp16_hd256_wide_tiles) { check_attention_bwd_hd256<__half>(163 * 1024, 256, "fp16 hd256 sm_80"); }
FA_TEST(attention_bwd_bf16_hd200_narrow_tiles) {
  check_attention_bwd_hd256<__nv_bfloat16>(99 * 1024, 200, "bf16 hd200 sm_86");
}

}  // namespace
