// The activation functions and their derivatives, in float.
//   silu(x)      = x * sigmoid(x)
//   gelu(x)      = x/2 * (1 + erf(x / sqrt(2)))                          (approximate="none")
//   gelu_tanh(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))     (approximate="tanh")
#pragma once

#include "../common/platform.cuh"

namespace fastattn::cuda {

enum class Act : int { kSilu = 0, kGelu = 1, kGeluTanh = 2 };

constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi): the normal pdf's constant
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kGeluTanhCubic = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) {
  // exp(-x) overflows to inf for x < -88: 1 / inf = 0, the correct limit (no NaN).
  return 1.0f / (1.0f + __expf(-x));
}

template <Act A>
__device__ __forceinline__ float act_fwd(float x) {
  if constexpr (A == Act::kSilu) {
    return x * sigmoid(x);
  } else if constexpr (A == Act::kGelu) {
    return 0.5f * x * (1.0f + erff(x * kSqrtHalf));
  } else {
    const float inner = kSqrt2OverPi * (x + kGeluTanhCubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(inner));
  }
}

// d act / dx.
template <Act A>
__device__ __forceinline__ float act_grad(float x) {
  if constexpr (A == Act::kSilu) {
    const float s = sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
  } else if constexpr (A == Act::kGelu) {
    // Phi(x) + x * phi(x); exp(-x^2/2) underflows to 0 for large |x|, the correct limit.
    return 0.5f * (1.0f + erff(x * kSqrtHalf)) + x * kInvSqrt2Pi * __expf(-0.5f * x * x);
  } else {
    const float x2 = x * x;
    const float t = tanhf(kSqrt2OverPi * (x + kGeluTanhCubic * x2 * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhCubic * x2);
  }
}

}  // namespace fastattn::cuda
