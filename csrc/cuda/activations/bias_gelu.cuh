// Fused bias + GELU (erf or tanh), forward and backward:
//   out = gelu(x + bias),  dx = dout * gelu'(x + bias)
// x/dout/out/dx are (rows, cols) with their own row strides, bias is (cols,) contiguous.
// x + bias is formed in float (not rounded to T first). The bias gradient (dx summed over
// rows) is left to the caller.
#pragma once

#include "activation_math.cuh"
#include "elementwise.cuh"

namespace fastattn::cuda {

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    bias_gelu_fwd_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, long long rows,
                         long long cols, long long x_stride, long long out_stride, bool vec_ok) {
  constexpr int N = kVec16<T>;
  const ChunkIter it(rows, cols, N);
  for (long long c = it.first(); c < it.total; c += it.step()) {
    const long long row = c / it.chunks_per_row;
    const long long col = (c - row * it.chunks_per_row) * N;
    const int n = static_cast<int>(cols - col < N ? cols - col : N);
    const bool vec = vec_ok && n == N;
    float v[N], b[N], o[N];
    load_chunk<T, N>(x + row * x_stride + col, n, vec, v);
    load_chunk<T, N>(bias + col, n, vec, b);
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = act_fwd<A>(v[i] + b[i]);
    store_chunk<T, N>(out + row * out_stride + col, n, vec, o);
  }
}

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    bias_gelu_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ x, const T* __restrict__ bias,
                         T* __restrict__ dx, long long rows, long long cols, long long dout_stride,
                         long long x_stride, long long dx_stride, bool vec_ok) {
  constexpr int N = kVec16<T>;
  const ChunkIter it(rows, cols, N);
  for (long long c = it.first(); c < it.total; c += it.step()) {
    const long long row = c / it.chunks_per_row;
    const long long col = (c - row * it.chunks_per_row) * N;
    const int n = static_cast<int>(cols - col < N ? cols - col : N);
    const bool vec = vec_ok && n == N;
    float d[N], v[N], b[N], o[N];
    load_chunk<T, N>(dout + row * dout_stride + col, n, vec, d);
    load_chunk<T, N>(x + row * x_stride + col, n, vec, v);
    load_chunk<T, N>(bias + col, n, vec, b);
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = d[i] * act_grad<A>(v[i] + b[i]);
    store_chunk<T, N>(dx + row * dx_stride + col, n, vec, o);
  }
}

}  // namespace fastattn::cuda
