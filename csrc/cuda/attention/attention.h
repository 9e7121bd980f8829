// Host launcher of the tensor-core FlashAttention-2 forward (flash_fwd.cuh).
//
// q (B, Hq, Lq, D), k/v (B, Hk, Lk, D) taken by (batch, head, seq) element strides with the
// head dim contiguous; Hq a multiple of Hk (GQA/MQA: query head h reads kv head
// h / (Hq / Hk)). out (B, Hq, Lq, D) by strides, lse (B, Hq, Lq) float32 contiguous:
// the natural-log sum of exp of the scaled scores, +inf for a row that sees no key (whose
// output is 0). Causal: key j is visible to query i iff j <= i + off, off = Lk - Lq when
// bottom_right (flash-attn's alignment) else 0 (torch's); a sliding window bounds it on
// either side with the same off. D is a multiple of 8 from 8 to
// 256 (run by the kernel for the next of 64, 128 and 256, zero-filled); the pointers are
// 16-byte aligned and the strides multiples of 8 elements (cp.async copies and the output is
// stored in 16 bytes); fastattn/backends/cuda/attention.py checks q/k/v before calling and
// attention_fwd checks out.
#pragma once

#include <cstdint>

namespace fastattn::cuda {

constexpr float kLog2e = 1.4426950408889634f;

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
  float scale_log2 = 0.0f;  // scale * log2(e), set by the launcher
  int diag_offset = 0;      // off of the causal and window bounds (Lk - Lq or 0); set by the launcher
  // Sliding window (-1: unbounded): key j visible to query i iff
  // i + off - window_left <= j <= i + off + window_right; causal implies window_right = 0 (the
  // launcher sets it).
  int window_left = -1;
  int window_right = -1;
  // Softcapping (0: off): scores s * scale become softcap * tanh(s * scale / softcap) before
  // the masks. softcap_inner/outer (scale / softcap, softcap / scale) are set by the launcher.
  float softcap = 0.0f;
  float softcap_inner = 0.0f;
  float softcap_outer = 0.0f;
  // ALiBi (null: off): scores gain -slope * |i + Lk - Lq - j|, slope = alibi_slopes[b *
  // alibi_batch_stride + h] (float32; stride 0 for one slope per head). alibi_scale = -1 / scale,
  // set by the launcher.
  const float* alibi_slopes = nullptr;
  int64_t alibi_batch_stride = 0;
  float alibi_scale = 0.0f;
  bool causal = false;
  bool bottom_right = false;
};

// Sets the fields marked "set by the launcher" from the others: per-launch constants the kernels
// read from their parameters at each use, so that they take no register across the main loops
// (the hd128 loops use all 255). The backward's launcher calls it too (its parameters extend these).
inline void set_derived_fields(AttnFwdParams& p) {
  p.window_right = p.causal ? 0 : p.window_right;
  p.scale_log2 = p.scale * kLog2e;
  p.diag_offset = p.bottom_right ? static_cast<int>(p.seqlen_k - p.seqlen_q) : 0;
  p.softcap_inner = p.softcap > 0.0f ? p.scale / p.softcap : 0.0f;
  p.softcap_outer = p.softcap > 0.0f ? p.softcap / p.scale : 0.0f;
  p.alibi_scale = -1.0f / p.scale;
}

// The checks of a call's sizes and window bounds both directions make before launching: heads a
// multiple of heads_k, lengths within the kernels' 32-bit row arithmetic, window bounds clamped,
// batch and heads within the grid. Throws std::invalid_argument naming `op`.
void check_attention_problem(const AttnFwdParams& p, const char* op);

// Whether a (dtype, head dim) pair has compiled kernels (fp16/bf16, head dim a multiple of 8 up to 256).
bool attention_fwd_supported(int dtype, int64_t head_dim);

// Launches the forward kernel for p (throws std::invalid_argument for an unsupported pair).
void attention_fwd(const AttnFwdParams& p, void* stream);

}  // namespace fastattn::cuda
