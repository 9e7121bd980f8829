// Fused scale + mask + softmax over the last dim, forward and backward (Megatron-LM's
// FusedScaleMaskSoftmax semantics), one thread block per row.
//
// Forward: each thread takes chunks of N = 16 / sizeof(T) columns (16-byte loads when the
// row is contiguous and aligned), forms v = scale * x (+ additive mask, or -inf where the
// mask or the causal rule excludes the column) in float, keeps v in shared memory and
// its running max. One block max, then e = exp(v - max) back into shared memory and one
// block sum, then y = e / sum is written. The input is read once and the output written
// once; the row lives in shared memory as float (64 KB for the 16k maximum).
// A row with every column excluded has max = -inf and is written as zeros.
// The max propagates NaN (a NaN score that takes part makes the row NaN, as in torch).
//
// Backward: dx = scale * y * (dy - dot(dy, y)): one block reduction for the dot product,
// then a second pass over y and dy.
#pragma once

#include "../common/reduce.cuh"
#include "../common/vec.cuh"
#include "softmax.h"

namespace fastattn::cuda {

constexpr int kSoftmaxMaxThreads = 256;

struct NanMaxOp {
  // Unlike fmaxf, a NaN operand wins.
  __device__ __forceinline__ float operator()(float a, float b) const { return (a > b || a != a) ? a : b; }
  static __device__ __forceinline__ float identity() { return -INFINITY; }
};

// The additive mask value at `off` (float kinds only).
__device__ __forceinline__ float additive_mask(const void* mask, int kind, long long off) {
  switch (static_cast<SoftmaxMask>(kind)) {
    case SoftmaxMask::kFloat32: return static_cast<const float*>(mask)[off];
    case SoftmaxMask::kFloat16: return to_float(static_cast<const __half*>(mask)[off]);
    case SoftmaxMask::kBFloat16: return to_float(static_cast<const __nv_bfloat16*>(mask)[off]);
    default: return 0.0f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kSoftmaxMaxThreads)
    scaled_masked_softmax_fwd_kernel(const T* __restrict__ x, Strides4 xs, T* __restrict__ y, Strides4 ys,
                                     const void* __restrict__ mask, int mask_kind, Strides4 ms, long long heads,
                                     long long seqlen_q, long long seqlen_k, float scale, bool causal) {
  constexpr int N = kVec16<T>;
  __shared__ float scratch[32];
  FA_DYNAMIC_SHARED(float, row);

  const long long r = blockIdx.x;  // row = (b * heads + h) * seqlen_q + q
  const long long q = r % seqlen_q, bh = r / seqlen_q, h = bh % heads, b = bh / heads;
  const T* xr = x + b * xs.b + h * xs.h + q * xs.q;
  T* yr = y + b * ys.b + h * ys.h + q * ys.q;
  const long long mrow = b * ms.b + h * ms.h + q * ms.q;
  const bool x_vec = xs.k == 1 && is_aligned(xr, 16);
  const bool y_vec = ys.k == 1 && is_aligned(yr, 16);
  // Causal (top-left): column k takes part iff k <= q.
  const long long visible_end = causal ? (q + 1 < seqlen_k ? q + 1 : seqlen_k) : seqlen_k;

  float local_max = -INFINITY;
  for (long long col = static_cast<long long>(threadIdx.x) * N; col < seqlen_k; col += blockDim.x * N) {
    const int n = static_cast<int>(seqlen_k - col < N ? seqlen_k - col : N);
    float v[N];
    if (col < visible_end) {
      if (x_vec && n == N) {
        load_float<T, N>(xr + col, v);
      } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = i < n ? to_float(xr[(col + i) * xs.k]) : 0.0f;
      }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i >= n) continue;  // not break: a fully unrolled loop keeps v[] in registers
      const long long k = col + i;
      // A masked-out score is replaced, not added to: a NaN there must not leak into the row.
      float s = -INFINITY;
      if (k < visible_end) {
        if (mask_kind == static_cast<int>(SoftmaxMask::kBool)) {
          if (!static_cast<const unsigned char*>(mask)[mrow + k * ms.k]) s = v[i] * scale;
        } else {
          s = v[i] * scale;
          if (mask_kind != static_cast<int>(SoftmaxMask::kNone)) s += additive_mask(mask, mask_kind, mrow + k * ms.k);
        }
      }
      row[k] = s;
      local_max = NanMaxOp{}(local_max, s);
    }
  }
  const float row_max = block_allreduce(local_max, NanMaxOp{}, scratch);

  // exp(-inf - -inf) would be NaN: a fully masked row is written as zeros instead.
  const bool empty = row_max == -INFINITY;
  float local_sum = 0.0f;
  for (long long col = static_cast<long long>(threadIdx.x) * N; col < seqlen_k; col += blockDim.x * N) {
    const int n = static_cast<int>(seqlen_k - col < N ? seqlen_k - col : N);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i >= n) continue;
      const float e = empty ? 0.0f : __expf(row[col + i] - row_max);
      row[col + i] = e;
      local_sum += e;
    }
  }
  const float row_sum = block_allreduce_sum(local_sum, scratch);
  const float inv = empty ? 0.0f : 1.0f / row_sum;

  // Each thread reads back only the entries it wrote: no barrier needed on `row`.
  for (long long col = static_cast<long long>(threadIdx.x) * N; col < seqlen_k; col += blockDim.x * N) {
    const int n = static_cast<int>(seqlen_k - col < N ? seqlen_k - col : N);
    float o[N];
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = i < n ? row[col + i] * inv : 0.0f;
    if (y_vec && n == N) {
      store_float<T, N>(yr + col, o);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) yr[(col + i) * ys.k] = from_float<T>(o[i]);
    }
  }
}

// Columns col .. col + n - 1 of a row with element stride `stride` as float, 0 past n: one
// 16-byte load when `vec` (unit stride, aligned row) and the chunk is full.
template <typename T, int N>
__device__ __forceinline__ void load_row_chunk(const T* row, long long stride, long long col, int n, bool vec,
                                               float (&out)[N]) {
  if (vec && n == N) {
    load_float<T, N>(row + col, out);
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = i < n ? to_float(row[(col + i) * stride]) : 0.0f;
}

template <typename T>
__global__ void __launch_bounds__(kSoftmaxMaxThreads)
    scaled_masked_softmax_bwd_kernel(const T* __restrict__ dy, Strides4 dys, const T* __restrict__ y, Strides4 ys,
                                     T* __restrict__ dx, Strides4 dxs, long long heads, long long seqlen_q,
                                     long long seqlen_k, float scale) {
  constexpr int N = kVec16<T>;
  __shared__ float scratch[32];
  const long long r = blockIdx.x;
  const long long q = r % seqlen_q, bh = r / seqlen_q, h = bh % heads, b = bh / heads;
  const T* dyr = dy + b * dys.b + h * dys.h + q * dys.q;
  const T* yr = y + b * ys.b + h * ys.h + q * ys.q;
  T* dxr = dx + b * dxs.b + h * dxs.h + q * dxs.q;
  const bool vec = dys.k == 1 && ys.k == 1 && dxs.k == 1 && is_aligned(dyr, 16) && is_aligned(yr, 16) &&
                   is_aligned(dxr, 16);

  float local = 0.0f;
  for (long long col = static_cast<long long>(threadIdx.x) * N; col < seqlen_k; col += blockDim.x * N) {
    const int n = static_cast<int>(seqlen_k - col < N ? seqlen_k - col : N);
    float a[N], p[N];
    load_row_chunk<T, N>(dyr, dys.k, col, n, vec, a);
    load_row_chunk<T, N>(yr, ys.k, col, n, vec, p);
#pragma unroll
    for (int i = 0; i < N; ++i) local += a[i] * p[i];
  }
  const float dot = block_allreduce_sum(local, scratch);

  for (long long col = static_cast<long long>(threadIdx.x) * N; col < seqlen_k; col += blockDim.x * N) {
    const int n = static_cast<int>(seqlen_k - col < N ? seqlen_k - col : N);
    float a[N], p[N], o[N];
    load_row_chunk<T, N>(dyr, dys.k, col, n, vec, a);
    load_row_chunk<T, N>(yr, ys.k, col, n, vec, p);
#pragma unroll
    for (int i = 0; i < N; ++i) o[i] = scale * p[i] * (a[i] - dot);
    if (vec && n == N) {
      store_float<T, N>(dxr + col, o);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (i < n) dxr[(col + i) * dxs.k] = from_float<T>(o[i]);
    }
  }
}

}  // namespace fastattn::cuda
