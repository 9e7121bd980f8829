// mma_m16n8k16: one warp-wide tensor-core multiply-accumulate D = A * B + C with A 16x16
// (row-major), B 16x8 (column-major), fp16 or bf16 inputs and fp32 accumulators; the
// nvcc build is `mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32`.
//
// Per-lane fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"), with g = lane >> 2 (groupID) and t = lane & 3 (threadID_in_group); each 32-bit
// register holds two 16-bit elements, the lower column/k index in the low half:
//   A: a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]
//      a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   B: b[0] = B[2t..2t+1][g]     b[1] = B[2t+8..2t+9][g]
//   C/D (fp32): c[0], c[1] = C[g][2t], C[g][2t+1];  c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
//
// The host SIMT build (FASTATTN_SIM) gathers the warp's fragments through the warp's
// collective slots (three exchanges: a[0..1], a[2..3], b[0..1]) and computes each lane's
// four outputs from the whole A and B, with fp32 products summed in k order.
#pragma once

#include <cstdint>
#include <type_traits>

#include "platform.cuh"

namespace fastattn::cuda {

#if defined(FASTATTN_SIM)
namespace sim_detail {

inline float elem16_to_float(std::uint16_t bits, bool bf16) {
  return bf16 ? ::fastattn::sim::bf16_bits_to_float(bits) : ::fastattn::sim::half_bits_to_float(bits);
}

// Every lane's 64-bit operand, copied out before the next collective can reuse the slots.
inline void gather64(std::uint64_t mine, std::uint64_t (&all)[32]) {
  ::fastattn::sim::WarpState::Slot* slots = nullptr;
  const unsigned who = ::fastattn::sim::exchange(mine, slots);
  if (who != 0xffffffffu) ::fastattn::sim::fail_here("mma/ldmatrix: every lane of the warp must take part");
  for (int l = 0; l < 32; ++l) all[l] = slots[l].value;
}

inline void mma_m16n8k16_sim(float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                             const float (&c)[4], bool bf16) {
  std::uint64_t a01[32], a23[32], b01[32];
  gather64(a[0] | (std::uint64_t(a[1]) << 32), a01);
  gather64(a[2] | (std::uint64_t(a[3]) << 32), a23);
  gather64(b[0] | (std::uint64_t(b[1]) << 32), b01);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const std::uint32_t regs[4] = {std::uint32_t(a01[l]), std::uint32_t(a01[l] >> 32), std::uint32_t(a23[l]),
                                   std::uint32_t(a23[l] >> 32)};
    for (int r = 0; r < 4; ++r) {
      const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
      A[row][col] = elem16_to_float(std::uint16_t(regs[r]), bf16);
      A[row][col + 1] = elem16_to_float(std::uint16_t(regs[r] >> 16), bf16);
    }
    for (int r = 0; r < 2; ++r) {
      const std::uint32_t reg = std::uint32_t(b01[l] >> (32 * r));
      const int k = 2 * t + r * 8;
      B[k][g] = elem16_to_float(std::uint16_t(reg), bf16);
      B[k + 1][g] = elem16_to_float(std::uint16_t(reg >> 16), bf16);
    }
  }
  const int lane = static_cast<int>(::fastattn::sim::g_ctx.lane);
  const int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
    float acc = 0.0f;
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc + c[i];
  }
}

}  // namespace sim_detail
#endif

// T is __half or __nv_bfloat16 (the element type packed in a and b).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(sizeof(T) == 2, "mma_m16n8k16: fp16 or bf16 inputs");
#if defined(FASTATTN_SIM)
  sim_detail::mma_m16n8k16_sim(d, a, b, c, std::is_same_v<T, __nv_bfloat16>);
#else
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#endif
}

// In-place accumulate: acc = A * B + acc.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const float c[4] = {acc[0], acc[1], acc[2], acc[3]};
  mma_m16n8k16<T>(acc, a, b, c);
}

// Two fp32 values rounded to T and packed into one 32-bit fragment register (x in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  uint16_t lo, hi;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    lo = __bfloat16_as_ushort(__float2bfloat16_rn(x));
    hi = __bfloat16_as_ushort(__float2bfloat16_rn(y));
  } else {
    lo = __half_as_ushort(__float2half_rn(x));
    hi = __half_as_ushort(__float2half_rn(y));
  }
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

}  // namespace fastattn::cuda
