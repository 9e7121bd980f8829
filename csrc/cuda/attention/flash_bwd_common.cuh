// Pieces of the attention backward shared by its kernels: the recomputation of one
// probability and its score gradient, the preprocess and the dq conversion.
//
// Math (Dao, "FlashAttention-2", 2023, algorithm 2): with s = q . k the raw score, the forward
// used z = s (or softcap' * tanh(s / softcap') with softcap' = softcap / scale), plus the ALiBi
// bias, and p = exp(scale * z - lse). Given dp = dO . v and delta = rowsum(dO * O),
//   dS = p * (dp - delta)                 (gradient with respect to scale * z)
//   ds = scale * dS * (1 - tanh^2)        (with respect to s; the tanh factor only with softcap)
// so dQ = ds K, dK = ds^T Q, dV = P^T dO. The kernels keep dS * (1 - tanh^2) (with softcap
// dS * (1 - tanh^2) / 4, see prob_and_grad) and apply `ds_scale` (scale, or 4 scale) once to
// the accumulated dK and dQ.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../common/convert.cuh"
#include "../common/fast_math.cuh"
#include "../common/platform.cuh"
#include "attention_bwd.h"
#include "bwd_params.h"
#include "bwd_kernel_traits.cuh"

namespace fastattn::cuda::attn {

// How the element loop treats a score: as is (ALiBi, if any, added in a pass of its own before
// the loop), through softcap's tanh, or through the tanh and then ALiBi's bias (per element:
// the derivative needs the capped score before the bias). Softcap without ALiBi has its own
// instantiation so that it pays no bias arithmetic.
enum ScoreMode : int { kScorePlain = 0, kScoreCap = 1, kScoreCapAlibi = 2 };

// One element's probability and score gradient, in place: s (the raw score, with the ALiBi bias
// already added when Mode is kScorePlain) becomes p, dp becomes dS (times the softcap factor).
// Not visible: p = 0. exp2(-inf) = 0 also covers lse = +inf (a row that sees no key, or a
// padding row). rel (query - key + Lk - Lq) is read only for kScoreCapAlibi.
template <int Mode>
__device__ __forceinline__ void prob_and_grad(const AttnBwdParams& p, float& s, float& dp, float lse_log2, float delta,
                                              bool visible, float alibi_a, int rel) {
  constexpr bool kCap = Mode != kScorePlain;
  float z = s, dcap = 1.0f;
  if constexpr (kCap) {
    // tanh(x) = 1 - 2r and 1 - tanh(x)^2 = 4r(1 - r) with r = 1 / (exp(2x) + 1): two MUFU ops
    // and three FP32 ones instead of tanhf's range-reduced sequence (about 20 instructions an
    // element). Absolute error about 2^-22 (r saturates to 0 or 1 for large |x|, giving
    // +-1 and 0 exactly); the forward's tanhf differs from it by far less than P's rounding.
    // The 4 of 4r(1 - r) is in ds_scale, applied once to dK and dQ.
    const float r = rcp_approx(exp2_approx(s * p.softcap_exp2) + 1.0f);
    const float outer = Mode == kScoreCapAlibi ? fmaf(alibi_a, fabsf(static_cast<float>(rel)), p.softcap_outer)
                                               : p.softcap_outer;
    z = fmaf(r, p.softcap_neg2outer, outer);
    dcap = fmaf(-r, r, r);
  }
  const float pr = visible ? exp2_approx(z * p.scale_log2 - lse_log2) : 0.0f;
  s = pr;
  dp = kCap ? pr * (dp - delta) * dcap : pr * (dp - delta);
}

// Calls f(masked, mode) with std::integral_constant arguments for a tile's runtime conditions
// (it crosses a mask bound; p's softcap and ALiBi), so that each combination is its own
// instantiation of the element loop, with no branch inside. CapAlone: softcap without ALiBi
// gets its own loop (kScoreCap); otherwise it runs kScoreCapAlibi with a zero bias (alibi_factor
// is 0 without slopes), one loop fewer: the kernels at head dims 128 and 256 run at the register
// limit, where a third loop made ptxas spill, and their element loops weigh half as much per MMA.
template <bool CapAlone, typename F>
__device__ __forceinline__ void with_score_loop(const AttnBwdParams& p, bool masked, F&& f) {
  using Yes = std::integral_constant<bool, true>;
  using No = std::integral_constant<bool, false>;
  using Plain = std::integral_constant<int, kScorePlain>;
  using Cap = std::integral_constant<int, kScoreCap>;
  using CapAlibi = std::integral_constant<int, kScoreCapAlibi>;
  const bool capped = p.softcap_outer > 0.0f, alibi = !CapAlone || p.alibi_slopes != nullptr;
  if (masked) {
    if (!capped) f(Yes{}, Plain{});
    else if (alibi) f(Yes{}, CapAlibi{});
    else f(Yes{}, Cap{});
  } else {
    if (!capped) f(No{}, Plain{});
    else if (alibi) f(No{}, CapAlibi{});
    else f(No{}, Cap{});
  }
}

// ALiBi's per-(batch, head) factor: -slope / scale (so that scale * it * |rel| is the bias), 0 without.
__device__ __forceinline__ float alibi_factor(const AttnBwdParams& p, int b, int h) {
  return p.alibi_slopes != nullptr ? p.alibi_slopes[b * p.alibi_batch_stride + h] * p.alibi_scale : 0.0f;
}

// Grid (seqlen_q_pad / kBwdRowsPerBlock, Hq, B), one warp a row: delta = rowsum(dO * O) over the
// head dim, lse in log2 units; padding rows (>= Lq) get delta 0 and lse +inf, so that every
// probability the kernels recompute for them is 0. Zeroes the row of the dq accumulator.
template <typename T, int D>
__global__ void __launch_bounds__(kBwdRowThreads) flash_bwd_preprocess_kernel(const AttnBwdParams p) {
  constexpr int kRows = kBwdRowsPerBlock;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + warp;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t srow = (b * p.heads + h) * p.seqlen_q_pad + row;
  float delta = 0.0f, lse2 = INFINITY;
  if (row < p.seqlen_q) {
    const T* o = static_cast<const T*>(p.out) + b * p.o_strides[0] + h * p.o_strides[1] + row * p.o_strides[2];
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_strides[0] + h * p.do_strides[1] + row * p.do_strides[2];
    for (int c = lane; c < p.head_dim; c += 32) delta += to_float(o[c]) * to_float(dout[c]);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) delta += __shfl_xor_sync(0xffffffffu, delta, m);
    lse2 = p.lse[(b * p.heads + h) * p.seqlen_q + row] * kLog2e;
  }
  if (lane == 0) {
    p.lse_log2[srow] = lse2;
    p.delta[srow] = delta;
  }
  if (p.dq_accum != nullptr)
    for (int c = lane; c < D; c += 32) p.dq_accum[srow * D + c] = 0.0f;
}

// Grid (ceil(Lq / kBwdRowsPerBlock), Hq, B), one warp a row: dq = accumulator * scale in dq's type.
template <typename T, int D>
__global__ void __launch_bounds__(kBwdRowThreads) flash_bwd_convert_dq_kernel(const AttnBwdParams p) {
  constexpr int kRows = kBwdRowsPerBlock;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + warp;
  if (row >= p.seqlen_q) return;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const float* acc = p.dq_accum + ((b * p.heads + h) * p.seqlen_q_pad + row) * D;
  T* dq = static_cast<T*>(p.dq) + b * p.dq_strides[0] + h * p.dq_strides[1] + row * p.dq_strides[2];
  for (int c = lane; c < p.head_dim; c += 32) dq[c] = from_float<T>(acc[c] * p.ds_scale);
}

}  // namespace fastattn::cuda::attn
