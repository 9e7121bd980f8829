// Branch-free float32 math and 16-bit float conversions written so that GCC and Clang
// auto-vectorise loops calling them (no libm calls, no data-dependent branches:
// every case is computed and picked with a select). Scalar semantics, so the same
// code is exact on every ISA; the vector width comes from the function clone that
// inlines it (see FASTATTN_CPU_CLONES).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define FASTATTN_INLINE inline __attribute__((always_inline))
#else
#define FASTATTN_INLINE inline
#endif

// Hot loops are compiled three times on x86-64 Linux (AVX-512, AVX2+FMA, baseline
// SSE2) and the loader picks one per CPU (GNU ifunc), so the module stays portable
// with no -march flag. Elsewhere they are compiled once for the baseline.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    !defined(FASTATTN_NO_MULTIVERSION)
#define FASTATTN_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTATTN_CPU_CLONES
#endif

namespace fastattn::cpu {

FASTATTN_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

FASTATTN_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// exp(x) to ~1 ulp (Cephes expf): x = n*ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
// polynomial, 2^n built in the exponent bits. The input is clamped to [-87, 88] so n+127
// stays a normal exponent: results saturate at ~1.6e-38 and ~1.7e38 instead of reaching
// 0/denormals/inf, which is harmless where it is used (1 + exp(.) and exp(-z^2) * poly).
// NaN propagates (the clamps keep NaN, the polynomial turns it into NaN).
FASTATTN_INLINE float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x*log2(e) to nearest by adding 1.5*2^23: the integer lands in the low mantissa
  // bits, so no float->int conversion (undefined for NaN) is needed.
  const float magic = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + magic;
  const float n = shifted - magic;
  const int32_t ni = static_cast<int32_t>(float_to_bits(shifted) - float_to_bits(magic));
  // Cody-Waite: ln2 split in a part with few mantissa bits (exact n*C1) and a remainder.
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(static_cast<uint32_t>(ni + 127) << 23);
}

// erfc(z) for z >= 0 with relative error ~1.2e-7 everywhere (Numerical Recipes' erfcc,
// a Chebyshev fit of erfc(z)*exp(z^2) in t = 1/(1 + z/2)). Relative, not absolute,
// accuracy matters: GELU(x) = x * erfc(-x/sqrt2) / 2 for x << 0 is a product with a tiny
// erfc, where 1 - erf(.) would lose every digit.
FASTATTN_INLINE float erfc_nonneg_f32(float z) {
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * exp_f32(p - z * z);
}

// Standard normal CDF Phi(x) = erfc(-x/sqrt2)/2, using only erfc of a non-negative
// argument: Phi(x) = 1 - erfc(x/sqrt2)/2 for x >= 0.
FASTATTN_INLINE float normal_cdf_f32(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float half_erfc = 0.5f * erfc_nonneg_f32(ax * 0.70710678118654752f);
  return x < 0.0f ? half_erfc : 1.0f - half_erfc;
}

// ---- 16-bit floats <-> float32 (round to nearest even, NaN kept quiet) ----

FASTATTN_INLINE float bf16_to_f32(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

FASTATTN_INLINE uint16_t f32_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  // Round to nearest even: add 0x7fff plus the lowest kept bit, then truncate.
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(is_nan ? ((u >> 16) | 0x40u) : rounded);
}

// IEEE half -> float: move exponent/mantissa into place and rebias; Inf/NaN get the
// float's all-ones exponent; denormals are renormalised by a float subtraction.
FASTATTN_INLINE float f16_to_f32(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (uint32_t(h) & 0x7fffu) << 13;
  const uint32_t exp = o & shifted_exp;
  o += (127u - 15u) << 23;
  o += exp == shifted_exp ? (128u - 16u) << 23 : 0u;
  const float denorm = bits_to_float(o + (1u << 23)) - bits_to_float(113u << 23);
  o = exp == 0 ? float_to_bits(denorm) : o;
  return bits_to_float(o | ((uint32_t(h) & 0x8000u) << 16));
}

// float -> IEEE half, round to nearest even (F. Giesen's float_to_half_fast3_rtne with
// its three cases computed unconditionally and selected).
FASTATTN_INLINE uint16_t f32_to_f16(float x) {
  const uint32_t f32_infty = 255u << 23;
  const uint32_t f16_max = (127u + 16u) << 23;  // 65536.0f: rounds to Inf from here on
  const uint32_t denorm_magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  uint32_t f = float_to_bits(x);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  // Overflow, Inf, NaN.
  const uint32_t big = f > f32_infty ? 0x7e00u : 0x7c00u;
  // Results below the smallest normal half: the float add rounds the mantissa in place.
  const float d = bits_to_float(f) + bits_to_float(denorm_magic_bits);
  const uint32_t small = float_to_bits(d) - denorm_magic_bits;
  // Normal range: rebias and round to nearest even on bit 13.
  const uint32_t mant_odd = (f >> 13) & 1u;
  const uint32_t normal = (f + ((15u - 127u) << 23) + 0xfffu + mant_odd) >> 13;
  const uint32_t o = f >= f16_max ? big : (f < (113u << 23) ? small : normal);
  return static_cast<uint16_t>(o | (sign >> 16));
}

}  // namespace fastattn::cpu
