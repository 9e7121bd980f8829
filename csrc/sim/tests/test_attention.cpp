// The tensor-core attention forward (csrc/cuda/attention) in the host SIMT build: a small GQA
// case per (dtype, causal alignment) against a float64 reference, by flash-attn's error-ratio
// rule (attention_ref.h: max|out - ref64| <= 2 max|ref_lowp - ref64| + floor, ref_lowp
// rounding the probabilities and the output to the input type as a low-precision kernel
// must). Its main job is the ThreadSanitizer run (run_sim_tests.py --tsan): two query blocks and several key
// tiles exercise the double-buffered cp.async ring and every __syncthreads() of the kernel.
#include "attention/attention.h"
#include "attention_ref.h"
#include "check.h"
#include "common/platform.cuh"

namespace {

template <typename T>
void check_attention(bool causal, bool bottom_right, int lq, int lk, const char* name) {
  fastattn::simtest::AttnProblem<T> prob(lq, lk, causal, bottom_right, unsigned(lq * 131 + lk));
  fastattn::cuda::attention_fwd(prob.fwd_params(), nullptr);
  int bad = 0;
  const double ratio = prob.fwd_worst_ratio(&bad);
  FA_CHECK(bad == 0, "%s: %d NaN outputs, wrong lse or nonzero rows that see no key", name, bad);
  FA_CHECK(ratio <= 1.0, "%s: error %.3g times the error-ratio bound", name, ratio);
}

FA_TEST(attention_fwd_fp16_noncausal) { check_attention<__half>(false, false, 70, 150, "fp16 full"); }
FA_TEST(attention_fwd_bf16_causal_top_left) { check_attention<__nv_bfloat16>(true, false, 70, 150, "bf16 tl"); }
FA_TEST(attention_fwd_fp16_causal_bottom_right) { check_attention<__half>(true, true, 130, 70, "fp16 br"); }

}  // namespace
