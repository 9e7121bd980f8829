// Fused bias + GELU (erf or tanh), forward and backward:
//   out = gelu(x + bias),  dx = dout * gelu'(x + bias)
// x/dout/out/dx are (rows, cols) with their own row strides, bias is (cols,) contiguous (read
// as a tensor of row stride 0). x + bias is formed in float (not rounded to T first). The bias
// gradient (dx summed over rows) is left to the caller.
#pragma once

#include "activation_math.cuh"
#include "elementwise.cuh"

namespace fastattn::cuda {

template <Act A>
struct BiasGeluFwdOp {  // (x, bias) -> out
  static constexpr int kIn = 2, kOut = 1;
  __device__ __forceinline__ static void apply(const float (&x)[2], float (&y)[1]) { y[0] = act_fwd<A>(x[0] + x[1]); }
};

template <Act A>
struct BiasGeluBwdOp {  // (dout, x, bias) -> dx
  static constexpr int kIn = 3, kOut = 1;
  __device__ __forceinline__ static void apply(const float (&x)[3], float (&y)[1]) {
    y[0] = x[0] * act_grad<A>(x[1] + x[2]);
  }
};

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    bias_gelu_fwd_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, long long rows,
                         long long cols, long long x_stride, long long out_stride, bool vec_ok) {
  elementwise_rows<T, BiasGeluFwdOp<A>>({x, bias}, {x_stride, 0}, {out}, {out_stride}, rows, cols, vec_ok);
}

template <typename T, Act A>
__global__ void __launch_bounds__(kElementwiseThreads)
    bias_gelu_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ x, const T* __restrict__ bias,
                         T* __restrict__ dx, long long rows, long long cols, long long dout_stride,
                         long long x_stride, long long dx_stride, bool vec_ok) {
  elementwise_rows<T, BiasGeluBwdOp<A>>({dout, x, bias}, {dout_stride, x_stride, 0}, {dx}, {dx_stride}, rows, cols,
                                        vec_ok);
}

}  // namespace fastattn::cuda
