// Fused gated activations (SwiGLU, GeGLU with erf or tanh GELU), forward and backward:
//   out = act(gate) * up
//   dgate = dout * up * act'(gate),  dup = dout * act(gate)
// gate/up/dout are (rows, cols) with their own row strides (gate and up are often the two
// halves of one projection's output); outputs are (rows, cols) with their own row stride.
// Math in float, one rounding per output.
#pragma once

#include "activation_math.cuh"
#include "elementwise.cuh"

namespace fastattn::cuda {

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    gated_act_fwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                         long long rows, long long cols, long long gate_stride, long long up_stride,
                         long long out_stride, bool vec_ok) {
  constexpr int N = kVec16<T>;
  const ChunkIter it(rows, cols, N);
  for (long long c = it.first(); c < it.total; c += it.step()) {
    const long long row = c / it.chunks_per_row;
    const long long col = (c - row * it.chunks_per_row) * N;
    const int n = static_cast<int>(cols - col < N ? cols - col : N);
    const bool vec = vec_ok && n == N;
    float g[N], u[N], o[N];
    load_chunk<T, N>(gate + row * gate_stride + col, n, vec, g);
    load_chunk<T, N>(up + row * up_stride + col, n, vec, u);
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = act_fwd<A>(g[i]) * u[i];
    store_chunk<T, N>(out + row * out_stride + col, n, vec, o);
  }
}

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    gated_act_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ gate, const T* __restrict__ up,
                         T* __restrict__ dgate, T* __restrict__ dup, long long rows, long long cols,
                         long long dout_stride, long long gate_stride, long long up_stride,
                         long long dgate_stride, long long dup_stride, bool vec_ok) {
  constexpr int N = kVec16<T>;
  const ChunkIter it(rows, cols, N);
  for (long long c = it.first(); c < it.total; c += it.step()) {
    const long long row = c / it.chunks_per_row;
    const long long col = (c - row * it.chunks_per_row) * N;
    const int n = static_cast<int>(cols - col < N ? cols - col : N);
    const bool vec = vec_ok && n == N;
    float d[N], g[N], u[N], dg[N], du[N];
    load_chunk<T, N>(dout + row * dout_stride + col, n, vec, d);
    load_chunk<T, N>(gate + row * gate_stride + col, n, vec, g);
    load_chunk<T, N>(up + row * up_stride + col, n, vec, u);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      dg[i] = d[i] * u[i] * act_grad<A>(g[i]);
      du[i] = d[i] * act_fwd<A>(g[i]);
    }
    store_chunk<T, N>(dgate + row * dgate_stride + col, n, vec, dg);
    store_chunk<T, N>(dup + row * dup_stride + col, n, vec, du);
  }
}

}  // namespace fastattn::cuda
