// Warp and block reductions (sum, max) over float, built on xor shuffles.
//
// block_allreduce must be called by every thread of the block (it contains __syncthreads)
// and returns the result to every thread. The block size must be a multiple of 32, up to
// 1024 (full warps: the xor shuffles name all 32 lanes). `scratch`
// is caller-provided shared memory of at least 32 floats; consecutive calls may reuse it
// (the trailing barrier keeps a later call from overwriting values still being read).
#pragma once

#include "platform.cuh"

namespace fastattn::cuda {

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
  static __device__ __forceinline__ float identity() { return 0.0f; }
};

struct MaxOp {
  // fmaxf drops NaN operands; callers that must propagate NaN do so by other means
  // (e.g. softmax: a NaN input reaches the sum of exponentials).
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  static __device__ __forceinline__ float identity() { return -INFINITY; }
};

// Reduces over the 32 lanes of the calling warp (butterfly: every lane gets the result).
template <typename Op>
__device__ __forceinline__ float warp_allreduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ float warp_allreduce_sum(float v) { return warp_allreduce(v, SumOp{}); }
__device__ __forceinline__ float warp_allreduce_max(float v) { return warp_allreduce(v, MaxOp{}); }

template <typename Op>
__device__ __forceinline__ float block_allreduce(float v, Op op, float* scratch) {
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int lane = tid % 32, warp = tid / 32, nwarps = (nthreads + 31) / 32;
  v = warp_allreduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : Op::identity();
  r = warp_allreduce(r, op);
  __syncthreads();  // scratch may be reused by the next reduction
  return r;
}

__device__ __forceinline__ float block_allreduce_sum(float v, float* scratch) {
  return block_allreduce(v, SumOp{}, scratch);
}
__device__ __forceinline__ float block_allreduce_max(float v, float* scratch) {
  return block_allreduce(v, MaxOp{}, scratch);
}

}  // namespace fastattn::cuda
