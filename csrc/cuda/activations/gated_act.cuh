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

template <Act A>
struct GatedActFwdOp {  // (gate, up) -> out
  static constexpr int kIn = 2, kOut = 1;
  __device__ __forceinline__ static void apply(const float (&x)[2], float (&y)[1]) { y[0] = act_fwd<A>(x[0]) * x[1]; }
};

template <Act A>
struct GatedActBwdOp {  // (dout, gate, up) -> (dgate, dup)
  static constexpr int kIn = 3, kOut = 2;
  __device__ __forceinline__ static void apply(const float (&x)[3], float (&y)[2]) {
    y[0] = x[0] * x[2] * act_grad<A>(x[1]);
    y[1] = x[0] * act_fwd<A>(x[1]);
  }
};

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    gated_act_fwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                         long long rows, long long cols, long long gate_stride, long long up_stride,
                         long long out_stride, bool vec_ok) {
  elementwise_rows<T, GatedActFwdOp<A>>({gate, up}, {gate_stride, up_stride}, {out}, {out_stride}, rows, cols,
                                        vec_ok);
}

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    gated_act_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ gate, const T* __restrict__ up,
                         T* __restrict__ dgate, T* __restrict__ dup, long long rows, long long cols,
                         long long dout_stride, long long gate_stride, long long up_stride,
                         long long dgate_stride, long long dup_stride, bool vec_ok) {
  elementwise_rows<T, GatedActBwdOp<A>>({dout, gate, up}, {dout_stride, gate_stride, up_stride}, {dgate, dup},
                                        {dgate_stride, dup_stride}, rows, cols, vec_ok);
}

}  // namespace fastattn::cuda
