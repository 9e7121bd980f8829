// Kernels that each break one rule the simulator enforces: run with the
// case's name, each must abort with a message naming the kernel, block, warp and lane and
// the rule (tests/test_sim_checks.py holds the expected messages). Never part of the normal
// test run: every case ends the process.
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/cp_async.cuh"
#include "common/ldmatrix.cuh"
#include "common/vec.cuh"

namespace fc = fastattn::cuda;
using fc::launch;

namespace {

// Lanes 0-15 pass mask 0x0000ffff, lanes 16-31 0xffff0000: each lane is in its mask and the
// masks agree, but the xor-16 partner is in the other half.
__global__ void shfl_reads_outside_mask(int* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x] = __shfl_xor_sync(mask, static_cast<int>(lane), 16);
}

__global__ void shfl_caller_not_in_mask(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, static_cast<int>(threadIdx.x), 0);
}

// 48 threads: lanes 16-31 of the second warp do not exist.
__global__ void shfl_reads_missing_lane(int* out) {
  out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 20);
}

// Lane 0 names every lane, the others leave lane 0 out.
__global__ void shfl_masks_disagree(int* out) {
  const unsigned mask = threadIdx.x % 32 == 0 ? 0xffffffffu : 0xfffffffeu;
  out[threadIdx.x] = __shfl_down_sync(mask, static_cast<int>(threadIdx.x), 1);
}

__global__ void ballot_caller_not_in_mask(int* out) { out[threadIdx.x] = __ballot_sync(0xffu, 1); }

__global__ void syncwarp_caller_not_in_mask(int* out) {
  out[threadIdx.x] = 1;
  __syncwarp(0x0000ffffu);
}

__global__ void ldmatrix_from_global(const uint16_t* rows, uint32_t* out) {
  uint32_t r[1];
  fc::ldmatrix_x1(r, rows + (threadIdx.x % 8) * 8);
  out[threadIdx.x] = r[0];
}

__global__ void cp_async_to_global(const float* src, float* dst) {
  fc::cp_async<16>(dst + threadIdx.x * 4, src + threadIdx.x * 4);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
}

__global__ void cp_async_from_shared(float* out) {
  FA_DYNAMIC_SHARED(float, smem);
  fc::cp_async<16>(smem + threadIdx.x * 4, smem + 512 + threadIdx.x * 4);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  out[threadIdx.x] = smem[threadIdx.x];
}

__global__ void cp_async_misaligned_source(const float* src, float* out) {
  FA_DYNAMIC_SHARED(float, smem);
  fc::cp_async<16>(smem + threadIdx.x * 4, src + 1 + threadIdx.x * 4);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  out[threadIdx.x] = smem[threadIdx.x];
}

__global__ void vector_store_misaligned(float* out) {
  float v[4] = {1, 2, 3, 4};
  fc::store_float<float, 4>(out + 2 + threadIdx.x * 4, v);
}

}  // namespace

int main(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "";
  std::vector<int> out(64, 0);
  alignas(16) static uint16_t rows[64];
  alignas(16) static uint32_t regs[32];
  alignas(16) static float buf[1024];
  if (!std::strcmp(c, "shfl_reads_outside_mask")) launch(shfl_reads_outside_mask, dim3(1), dim3(32), 0, nullptr, out.data());
  else if (!std::strcmp(c, "shfl_caller_not_in_mask")) launch(shfl_caller_not_in_mask, dim3(1), dim3(32), 0, nullptr, out.data());
  else if (!std::strcmp(c, "shfl_reads_missing_lane")) launch(shfl_reads_missing_lane, dim3(1), dim3(48), 0, nullptr, out.data());
  else if (!std::strcmp(c, "shfl_masks_disagree")) launch(shfl_masks_disagree, dim3(1), dim3(32), 0, nullptr, out.data());
  else if (!std::strcmp(c, "ballot_caller_not_in_mask")) launch(ballot_caller_not_in_mask, dim3(1), dim3(32), 0, nullptr, out.data());
  else if (!std::strcmp(c, "syncwarp_caller_not_in_mask")) launch(syncwarp_caller_not_in_mask, dim3(1), dim3(32), 0, nullptr, out.data());
  else if (!std::strcmp(c, "ldmatrix_from_global")) launch(ldmatrix_from_global, dim3(1), dim3(32), 0, nullptr, static_cast<const uint16_t*>(rows), static_cast<uint32_t*>(regs));
  else if (!std::strcmp(c, "cp_async_to_global")) launch(cp_async_to_global, dim3(1), dim3(32), 0, nullptr, static_cast<const float*>(buf), buf + 512);
  else if (!std::strcmp(c, "cp_async_from_shared")) launch(cp_async_from_shared, dim3(1), dim3(32), 4096, nullptr, buf);
  else if (!std::strcmp(c, "cp_async_misaligned_source")) launch(cp_async_misaligned_source, dim3(1), dim3(32), 4096, nullptr, static_cast<const float*>(buf), buf + 512);
  else if (!std::strcmp(c, "vector_store_misaligned")) launch(vector_store_misaligned, dim3(1), dim3(32), 0, nullptr, buf);
  else {
    std::fprintf(stderr, "unknown case '%s'\n", c);
    return 2;
  }
  std::printf("case %s finished without the expected abort\n", c);
  return 0;
}
