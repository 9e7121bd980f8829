// Host launchers of the fused scale-mask-softmax kernels (scaled_masked_softmax.cuh).
// Megatron-LM FusedScaleMaskSoftmax semantics, computed in float:
//   y = softmax(scale * x + additive_mask, with masked positions excluded) over the last dim
// Tensors are 4-D (B, H, Lq, Lk) given by element strides (a stride of 0 broadcasts);
// `dtype` is a code of csrc/common/dtype.h; `stream` a cudaStream_t (ignored when simulated).
#pragma once

#include <cstdint>

namespace fastattn::cuda {

// How the optional mask is stored and applied.
enum class SoftmaxMask : int {
  kNone = 0,
  kBool = 1,      // 1 byte per element, nonzero = masked out (Megatron's convention)
  kFloat32 = 2,   // added to the scaled scores
  kFloat16 = 3,
  kBFloat16 = 4,
};

struct Strides4 {
  int64_t b, h, q, k;
};

// Rows whose every position is masked give 0. Rows up to 16384 long (the row is kept in
// shared memory as float).
void scaled_masked_softmax_fwd(int dtype, const void* x, Strides4 x_strides, void* y, Strides4 y_strides,
                               const void* mask, int mask_kind, Strides4 mask_strides, int64_t batch,
                               int64_t heads, int64_t seqlen_q, int64_t seqlen_k, float scale, bool causal,
                               void* stream);

// dx = scale * y * (dy - sum_k(dy * y)).
void scaled_masked_softmax_bwd(int dtype, const void* dy, Strides4 dy_strides, const void* y, Strides4 y_strides,
                               void* dx, Strides4 dx_strides, int64_t batch, int64_t heads, int64_t seqlen_q,
                               int64_t seqlen_k, float scale, void* stream);

// The longest row the kernels take.
constexpr int64_t kSoftmaxMaxRow = 16384;

}  // namespace fastattn::cuda
