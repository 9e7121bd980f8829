// cp_async: asynchronous global -> shared copies of 4, 8 or 16 bytes (sm_80+ `cp.async`),
// grouped with cp_async_commit() and awaited with cp_async_wait<N>() (at most N groups
// still in flight). The zero-fill form copies `valid ? bytes : 0` bytes and fills the rest
// of the destination with zeros (the src-size operand), which is how tile tails past the
// end of a sequence become zeros without a branch around the copy; when !valid the source
// is never read. As in CUDA, a thread's copies are visible to other threads only after
// cp_async_wait and a barrier.
//
// The host SIMT build models the asynchrony (csrc/sim/include/fastattn_sim/runtime.h): the
// destination holds a NaN pattern until the copy lands, which is at the latest when a
// cp_async_wait covers its group; an ldmatrix of it before that wait and a barrier aborts,
// and a plain read sees the NaN pattern or races the copy (which ThreadSanitizer reports).
#pragma once

#include <cstdint>

#include "platform.cuh"

namespace fastattn::cuda {

template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* smem_dst, const void* gmem_src, bool valid) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(FASTATTN_SIM)
  ::fastattn::sim::cp_async_issue(smem_dst, gmem_src, Bytes, valid);
#else
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_size = valid ? Bytes : 0;
  if constexpr (Bytes == 16) {
    // .cg: cache in L2 only (streamed K/V tiles are read once per CTA).
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_size));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(gmem_src), "n"(Bytes),
                 "r"(src_size));
  }
#endif
}

template <int Bytes>
__device__ __forceinline__ void cp_async(void* smem_dst, const void* gmem_src) {
  cp_async_zfill<Bytes>(smem_dst, gmem_src, true);
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(FASTATTN_SIM)
  ::fastattn::sim::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(FASTATTN_SIM)
  ::fastattn::sim::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace fastattn::cuda
