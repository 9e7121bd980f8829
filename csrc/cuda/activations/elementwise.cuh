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

// The body of every elementwise kernel: Op's kIn inputs and kOut outputs of type T, (rows,
// cols) each with its own row stride (a stride of 0 repeats one row: a bias (cols,)), and
// Op::apply(const float (&x)[kIn], float (&y)[kOut]) per element in float, one rounding per
// output.
template <typename T, class Op>
__device__ __forceinline__ void elementwise_rows(const T* const (&in)[Op::kIn], const long long (&in_stride)[Op::kIn],
                                                 T* const (&out)[Op::kOut], const long long (&out_stride)[Op::kOut],
                                                 long long rows, long long cols, bool vec_ok) {
  constexpr int N = kVec16<T>;
  const ChunkIter it(rows, cols, N);
  for (long long c = it.first(); c < it.total; c += it.step()) {
    const long long row = c / it.chunks_per_row;
    const long long col = (c - row * it.chunks_per_row) * N;
    const int n = static_cast<int>(cols - col < N ? cols - col : N);
    const bool vec = vec_ok && n == N;
    float x[Op::kIn][N], y[Op::kOut][N];
#pragma unroll
    for (int i = 0; i < Op::kIn; ++i) load_chunk<T, N>(in[i] + row * in_stride[i] + col, n, vec, x[i]);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      float xe[Op::kIn], ye[Op::kOut];
#pragma unroll
      for (int i = 0; i < Op::kIn; ++i) xe[i] = x[i][e];
      Op::apply(xe, ye);
#pragma unroll
      for (int o = 0; o < Op::kOut; ++o) y[o][e] = ye[o];
    }
#pragma unroll
    for (int o = 0; o < Op::kOut; ++o) store_chunk<T, N>(out[o] + row * out_stride[o] + col, n, vec, y[o]);
  }
}

}  // namespace fastattn::cuda
