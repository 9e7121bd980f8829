// Fast transcendental functions for kernels whose results are rounded to 16-bit types anyway.
//
// exp2_approx(x): the hardware's base-2 exponential (`ex2.approx.ftz.f32`, one MUFU.EX2,
// relative error about 2^-22, subnormal results flushed to zero). exp2f without --use_fast_math
// wraps the same instruction in a range reduction that keeps subnormal results, two extra
// multiplies and a compare per call: in a softmax over fp16/bf16 scores those results are
// below anything the output can hold. exp2_approx(-inf) is 0, as the masked scores need.
// The host SIMT build uses std::exp2 (no flushing: within the device's error bound for every
// value a probability can round to).
//
// rcp_approx(x): the hardware's reciprocal (`rcp.approx.ftz.f32`, one MUFU.RCP, relative error
// about 2^-23; rcp(inf) = 0). The host build divides.
#pragma once

#include <cmath>

#include "platform.cuh"

namespace fastattn::cuda {

__device__ __forceinline__ float exp2_approx(float x) {
#if defined(FASTATTN_SIM)
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float rcp_approx(float x) {
#if defined(FASTATTN_SIM)
  return 1.0f / x;
#else
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

}  // namespace fastattn::cuda
