// The smallest CUDA translation unit of fastattn._cuda: reports which architectures this
// build contains and proves, on a real GPU, that one of them runs there.
#include "cuda/info.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#if defined(__NVCC__)
#include <cuda_runtime.h>
#endif

namespace fastattn::cuda {

std::vector<int> compiled_archs() {
  std::vector<int> archs;
#if defined(__CUDA_ARCH_LIST__)
  // nvcc defines it, in the host pass too, as e.g. 800,860,890,900.
  for (int arch : {__CUDA_ARCH_LIST__}) archs.push_back(arch / 10);
  std::sort(archs.begin(), archs.end());
  archs.erase(std::unique(archs.begin(), archs.end()), archs.end());
#endif
  return archs;
}

#if defined(__NVCC__)
namespace {

__global__ void arch_probe_kernel(int* out) {
#if defined(__CUDA_ARCH__)
  *out = __CUDA_ARCH__ / 10;
#endif
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

int probe_device_arch(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  int* d_out = nullptr;
  check(cudaMalloc(&d_out, sizeof(int)), "cudaMalloc");
  int h_out = -1;
  arch_probe_kernel<<<1, 1>>>(d_out);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaMemcpy(&h_out, d_out, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(d_out);
  check(err, "arch probe kernel");
  return h_out;
}
#else
int probe_device_arch(int) {
  throw std::runtime_error("probe_device_arch: this build has no device code");
}
#endif

}  // namespace fastattn::cuda
