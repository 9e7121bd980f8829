// ldmatrix: a warp loads one, two or four 8x8 matrices of 16-bit elements from shared
// memory into mma fragments; the nvcc build is `ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16`.
//
// Layout (PTX ISA, "Warp-level matrix load instruction: ldmatrix"): lanes 8m..8m+7 each give
// the shared address of one 16-byte row of matrix m (row 0..7 in lane order; for .x1 only
// lanes 0..7 and for .x2 lanes 0..15 are read, but every lane passes an address). Register
// r[m] of lane i holds row i/4, columns 2*(i%4) and 2*(i%4)+1 of matrix m (lower column in
// the low half). With .trans the matrix is transposed on the way: r[m] of lane i holds
// (row 2*(i%4), column i/4) and (row 2*(i%4)+1, column i/4) of matrix m as stored.
//
// The host SIMT build checks each row address a lane supplies (16-byte aligned, shared
// memory of the block, every cp.async that wrote it waited for and published by a barrier),
// exchanges the row addresses through the warp's collective slots once and reads the bytes
// each lane receives directly.
#pragma once

#include <cstdint>
#include <cstring>

#include "mma.cuh"
#include "platform.cuh"

namespace fastattn::cuda {

#if defined(FASTATTN_SIM)
namespace sim_detail {

template <int N, bool Trans>
inline void ldmatrix_sim(uint32_t (&r)[N], const void* row_addr) {
  // Only lanes 0..8N-1 supply an address (.x1: 0..7, .x2: 0..15, .x4: all).
  const unsigned lane = ::fastattn::sim::g_ctx.lane;
  if (lane < 8u * N) ::fastattn::sim::ldmatrix_row(row_addr, static_cast<int>(lane / 8));
  std::uint64_t addr[32];
  gather64(reinterpret_cast<std::uintptr_t>(row_addr), addr);
  const int i = static_cast<int>(lane);
  for (int m = 0; m < N; ++m) {
    if constexpr (Trans) {
      std::uint16_t lo, hi;
      std::memcpy(&lo, reinterpret_cast<const char*>(addr[8 * m + 2 * (i % 4)]) + 2 * (i / 4), 2);
      std::memcpy(&hi, reinterpret_cast<const char*>(addr[8 * m + 2 * (i % 4) + 1]) + 2 * (i / 4), 2);
      r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    } else {
      std::memcpy(&r[m], reinterpret_cast<const char*>(addr[8 * m + i / 4]) + 4 * (i % 4), 4);
    }
  }
}

}  // namespace sim_detail
#else
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// row_addr: this lane's row address (16-byte aligned, shared memory).
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<1, false>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(row_addr)));
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<2, false>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(row_addr)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<4, false>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_addr)));
#endif
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<1, true>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_u32(row_addr)));
#endif
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<2, true>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(row_addr)));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
#if defined(FASTATTN_SIM)
  sim_detail::ldmatrix_sim<4, true>(r, row_addr);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_addr)));
#endif
}

}  // namespace fastattn::cuda
