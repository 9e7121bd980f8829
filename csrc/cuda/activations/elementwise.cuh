// The traversal shared by the elementwise kernels: a (rows, cols) problem with a row
// stride per tensor and unit column stride, cut into chunks of N = 16 / sizeof(T)
// consecutive columns (one 16-byte access each). Threads walk the chunks grid-stride;
// a chunk is accessed as one vector when the launcher found every row of every tensor
// 16-byte aligned (`vec_ok`) and the chunk is full, else element by element (the ragged
// tail of each row).
#pragma once

#include "../common/vec.cuh"

namespace fastattn::cuda {

struct ChunkIter {
  long long chunks_per_row, total;

  __device__ __forceinline__ ChunkIter(long long rows, long long cols, int n)
      : chunks_per_row((cols + n - 1) / n), total(rows * ((cols + n - 1) / n)) {}

  __device__ __forceinline__ long long first() const {
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  }
  __device__ __forceinline__ long long step() const { return static_cast<long long>(gridDim.x) * blockDim.x; }
};

constexpr int kElementwiseThreads = 256;

}  // namespace fastattn::cuda
