// Host launcher of the tensor-core FlashAttention-2 forward (flash_fwd.cuh).
//
// q (B, Hq, Lq, D), k/v (B, Hk, Lk, D) taken by (batch, head, seq) element strides with the
// head dim contiguous; Hq a multiple of Hk (GQA/MQA: query head h reads kv head
// h / (Hq / Hk)). out (B, Hq, Lq, D) by strides, lse (B, Hq, Lq) float32 contiguous:
// the natural-log sum of exp of the scaled scores, +inf for a row that sees no key (whose
// output is 0). Causal: key j is visible to query i iff j <= i + off, off = Lk - Lq when
// bottom_right (flash-attn's alignment) else 0 (torch's). D is 64, 128 or 256; the
// pointers are 16-byte aligned and the strides multiples of 8 elements (cp.async copies
// 16 bytes); fastattn/backends/cuda_attention.py checks both before calling.
#pragma once

#include <cstdint>

namespace fastattn::cuda {

struct AttnFwdParams {
  int dtype = 1;  // csrc/common/dtype.h code: 1 fp16, 2 bf16
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  int64_t q_strides[3] = {0, 0, 0};  // batch, head, seq (elements)
  int64_t k_strides[3] = {0, 0, 0};
  int64_t v_strides[3] = {0, 0, 0};
  int64_t o_strides[3] = {0, 0, 0};
  int64_t batch = 0, heads = 0, heads_k = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  float scale = 1.0f;
  bool causal = false;
  bool bottom_right = false;
};

// Whether a (dtype, head dim) pair has compiled kernels.
bool attention_fwd_supported(int dtype, int64_t head_dim);

// Launches the forward kernel for p (throws std::invalid_argument for an unsupported pair).
void attention_fwd(const AttnFwdParams& p, void* stream);

}  // namespace fastattn::cuda
