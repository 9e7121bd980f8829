// The one place where the nvcc build and the host SIMT build (csrc/sim, FASTATTN_SIM defined)
// differ. Kernels include this instead of the CUDA headers and use:
//   FA_DYNAMIC_SHARED(T, name)  a T* to the block's dynamic shared memory (16-byte aligned);
//                               in the nvcc build this is `extern __shared__` memory;
//   fastattn::cuda::launch(kernel, grid, block, smem_bytes, stream, args...)  instead of <<<>>>;
//   fastattn::cuda::set_max_dynamic_smem(kernel, bytes)  before launching with > 48 KB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(FASTATTN_SIM)
#include "fastattn_sim/cuda_sim.h"
#define FA_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::fastattn::sim::dynamic_shared_memory())
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define FA_DYNAMIC_SHARED(T, name)                               \
  extern __shared__ __align__(16) unsigned char fa_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(fa_dynamic_smem_)
#endif

namespace fastattn::cuda {

#if defined(FASTATTN_SIM)

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t /*stream*/,
            Args... args) {
  ::fastattn::sim::launch(grid, block, smem, [&]() { kernel(args...); }, reinterpret_cast<const void*>(kernel));
}

template <typename... KArgs>
void set_max_dynamic_smem(void (*)(KArgs...), std::size_t) {}

#else

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
            Args... args) {
  kernel<<<grid, block, smem, stream>>>(args...);
  check_cuda(cudaGetLastError(), "kernel launch");
}

template <typename... KArgs>
void set_max_dynamic_smem(void (*kernel)(KArgs...), std::size_t bytes) {
  if (bytes > 48 * 1024)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
}

#endif

}  // namespace fastattn::cuda
