// __half / __nv_bfloat16 conversions and arithmetic of the host SIMT runtime, against
// independent oracles: the compiler's _Float16 for fp16, and a double-precision
// round-to-nearest-even for bf16.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "check.h"
#include "common/platform.cuh"

namespace {

std::uint16_t f16_oracle(float f) {
  _Float16 h = static_cast<_Float16>(f);
  std::uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}

// Round-to-nearest-even to bf16 computed by comparing the two candidates in double.
std::uint16_t bf16_oracle(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  const std::uint32_t lo = x & 0xffff0000u;
  if (lo == x) return static_cast<std::uint16_t>(x >> 16);
  const std::uint32_t hi = lo + 0x10000u;
  float flo, fhi;
  std::memcpy(&flo, &lo, 4);
  std::memcpy(&fhi, &hi, 4);
  const double dlo = std::fabs(static_cast<double>(f) - flo);
  // hi may be inf (rounding up past the largest finite bf16); its distance is then measured
  // to 2^128, where IEEE places the overflow threshold.
  const double dhi = std::isinf(fhi) ? std::fabs(std::ldexp(1.0, 128) * (f < 0 ? -1 : 1) - f)
                                     : std::fabs(static_cast<double>(fhi) - f);
  if (dlo < dhi) return static_cast<std::uint16_t>(lo >> 16);
  if (dhi < dlo) return static_cast<std::uint16_t>(hi >> 16);
  return static_cast<std::uint16_t>(((lo >> 16) & 1u) ? hi >> 16 : lo >> 16);
}

FA_TEST(half_roundtrip_exhaustive) {
  for (std::uint32_t u = 0; u < 65536; ++u) {
    const __half h = __ushort_as_half(static_cast<unsigned short>(u));
    const float f = __half2float(h);
    _Float16 ref;
    const std::uint16_t u16 = static_cast<std::uint16_t>(u);
    std::memcpy(&ref, &u16, 2);
    if (std::isnan(static_cast<float>(ref))) {
      FA_CHECK(std::isnan(f), "%04x should be NaN", u);
      continue;
    }
    FA_CHECK(f == static_cast<float>(ref), "%04x -> %g want %g", u, f, static_cast<float>(ref));
    FA_CHECK(__half_as_ushort(__float2half(f)) == u, "%04x does not round-trip", u);
  }
}

FA_TEST(half_rounding) {
  const float edges[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e9f, -65520.0f,
                         6.1035156e-05f, 6.0975552e-05f, 5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f,
                         8.940697e-08f, 1.0f + 1.0f / 2048.0f, 1.0f + 3.0f / 2048.0f, 1.0004883f,
                         INFINITY, -INFINITY, 1e-30f, -3.0f};
  for (float f : edges)
    FA_CHECK(__half_as_ushort(__float2half(f)) == f16_oracle(f), "%.9g: %04x want %04x", f,
             __half_as_ushort(__float2half(f)), f16_oracle(f));
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    std::uint32_t u = bits(rng);
    // Concentrate on the fp16 range: exponents 100..145 hold subnormals, ties and overflow.
    u = (u & 0x807fffffu) | ((100u + (u >> 23) % 46u) << 23);
    float f;
    std::memcpy(&f, &u, 4);
    FA_CHECK(__half_as_ushort(__float2half(f)) == f16_oracle(f), "%.9g (%08x)", f, u);
  }
  FA_CHECK(std::isnan(__half2float(__float2half(NAN))), "NaN");
}

FA_TEST(bf16_rounding) {
  std::mt19937 rng(99);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    std::uint32_t u = bits(rng);
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) {
      FA_CHECK(std::isnan(__bfloat162float(__float2bfloat16(f))), "NaN %08x", u);
      continue;
    }
    FA_CHECK(__bfloat16_as_ushort(__float2bfloat16(f)) == bf16_oracle(f), "%.9g (%08x): %04x want %04x", f, u,
             __bfloat16_as_ushort(__float2bfloat16(f)), bf16_oracle(f));
  }
  for (std::uint32_t u = 0; u < 65536; ++u) {
    const float f = __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(u)));
    std::uint32_t want = u << 16, got;
    std::memcpy(&got, &f, 4);
    FA_CHECK(got == want || std::isnan(f), "bf16 %04x widens wrongly", u);
  }
}

FA_TEST(half_arithmetic) {
  const __half a = __float2half(1.5f), b = __float2half(-0.3333f);
  FA_CHECK(__half2float(__hadd(a, b)) == __half2float(__float2half(1.5f + __half2float(b))), "hadd");
  FA_CHECK(__half2float(a * b) == __half2float(__float2half(1.5f * __half2float(b))), "hmul");
  FA_CHECK(__half2float(__hfma(a, b, a)) == __half2float(__float2half(std::fma(1.5f, __half2float(b), 1.5f))),
           "hfma");
  FA_CHECK(__half2float(__hneg(a)) == -1.5f, "hneg");
  FA_CHECK(a > b && !(a < b), "compare");
  const __nv_bfloat16 c = __float2bfloat16(3.0f), d = __float2bfloat16(0.1f);
  FA_CHECK(__bfloat162float(__hadd(c, d)) == __bfloat162float(__float2bfloat16(3.0f + __bfloat162float(d))),
           "bf16 add");
  const float2 f2 = __half22float2(__floats2half2_rn(0.5f, 2.0f));
  FA_CHECK(f2.x == 0.5f && f2.y == 2.0f, "half2");
  const float2 b2 = __bfloat1622float2(__floats2bfloat162_rn(-1.0f, 4.0f));
  FA_CHECK(b2.x == -1.0f && b2.y == 4.0f, "bfloat162");
  FA_CHECK(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2 && alignof(__half2) == 4, "layout");
}

}  // namespace
