// __half and __nv_bfloat16 for the host SIMT runtime: 16-bit storage types with the
// conversions and arithmetic of cuda_fp16.h / cuda_bf16.h that the project's kernels use.
// Conversions from float round to nearest even, with IEEE overflow to infinity, gradual
// underflow (fp16 subnormals) and quiet NaNs, bit-exact with the GPU's cvt.rn.
// Arithmetic is done in float and rounded once, as __hadd/__hmul etc. do.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastattn_sim/types.h"

namespace fastattn::sim {

inline std::uint32_t float_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u)  // inf, or NaN kept quiet with the top payload bits
    return static_cast<std::uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? (0x200u | ((a >> 13) & 0x3ffu)) : 0u));
  // 65520 = halfway between 65504 (largest half, odd mantissa) and 2^16: ties-to-even gives inf.
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half, m * 2^-24
    // Scaling by 2^24 is exact; nearbyint rounds to nearest even in the default mode.
    // m == 1024 carries into the smallest normal, which is the correct encoding.
    const float m = std::nearbyint(bits_float(a) * 16777216.0f);
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(m));
  }
  std::uint32_t h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);  // rebias 127 -> 15
  const std::uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry may bump the exponent: fine
  return static_cast<std::uint16_t>(sign | h);
}

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);  // m * 2^-24, exact
    return sign ? -v : v;
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

inline float bf16_bits_to_float(std::uint16_t b) { return bits_float(static_cast<std::uint32_t>(b) << 16); }

}  // namespace fastattn::sim

struct __half {
  std::uint16_t __x;
  __half() = default;
  __half(float f) : __x(fastattn::sim::float_to_half_bits(f)) {}
  __half(double f) : __half(static_cast<float>(f)) {}
  __half(int i) : __half(static_cast<float>(i)) {}
  operator float() const { return fastattn::sim::half_bits_to_float(__x); }
};

struct __nv_bfloat16 {
  std::uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(fastattn::sim::float_to_bf16_bits(f)) {}
  __nv_bfloat16(double f) : __nv_bfloat16(static_cast<float>(f)) {}
  __nv_bfloat16(int i) : __nv_bfloat16(static_cast<float>(i)) {}
  operator float() const { return fastattn::sim::bf16_bits_to_float(__x); }
};

struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };

// ---- conversions
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.__x = u; return b; }

inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }

// ---- arithmetic: computed in float, rounded once to the 16-bit type
#define FASTATTN_SIM_HALF_OPS(T, P)                                                              \
  inline T P##add(T a, T b) { return T(float(a) + float(b)); }                                   \
  inline T P##sub(T a, T b) { return T(float(a) - float(b)); }                                   \
  inline T P##mul(T a, T b) { return T(float(a) * float(b)); }                                   \
  inline T P##div(T a, T b) { return T(float(a) / float(b)); }                                   \
  inline T P##fma(T a, T b, T c) { return T(std::fma(float(a), float(b), float(c))); }           \
  inline T P##neg(T a) { T r = a; r.__x ^= 0x8000u; return r; }                                  \
  inline T P##max(T a, T b) { return T(std::fmax(float(a), float(b))); }                         \
  inline T P##min(T a, T b) { return T(std::fmin(float(a), float(b))); }                         \
  inline bool P##eq(T a, T b) { return float(a) == float(b); }                                   \
  inline bool P##lt(T a, T b) { return float(a) < float(b); }                                    \
  inline bool P##gt(T a, T b) { return float(a) > float(b); }                                    \
  inline bool P##isnan(T a) { return std::isnan(float(a)); }                                     \
  inline int P##isinf(T a) { float f = float(a); return std::isinf(f) ? (f > 0 ? 1 : -1) : 0; }  \
  inline T operator+(T a, T b) { return P##add(a, b); }                                          \
  inline T operator-(T a, T b) { return P##sub(a, b); }                                          \
  inline T operator*(T a, T b) { return P##mul(a, b); }                                          \
  inline T operator/(T a, T b) { return P##div(a, b); }                                          \
  inline T operator-(T a) { return P##neg(a); }                                                  \
  inline T& operator+=(T& a, T b) { return a = P##add(a, b); }                                   \
  inline T& operator*=(T& a, T b) { return a = P##mul(a, b); }                                   \
  inline bool operator==(T a, T b) { return float(a) == float(b); }                              \
  inline bool operator!=(T a, T b) { return float(a) != float(b); }                              \
  inline bool operator<(T a, T b) { return float(a) < float(b); }                                \
  inline bool operator>(T a, T b) { return float(a) > float(b); }                                \
  inline bool operator<=(T a, T b) { return float(a) <= float(b); }                              \
  inline bool operator>=(T a, T b) { return float(a) >= float(b); }

FASTATTN_SIM_HALF_OPS(__half, __h)
FASTATTN_SIM_HALF_OPS(__nv_bfloat16, __h)
#undef FASTATTN_SIM_HALF_OPS
