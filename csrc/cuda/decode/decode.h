// Host launchers of split-KV decoding attention (flash_attn_with_kvcache semantics).
//
// q (B, Lq, Hq, D); k_cache/v_cache (Bc >= B, Lc, Hk, D / Dv); optional k_new/v_new
// (B, Lnew, Hk, D / Dv) appended in place at cache_seqlens[b] first; then batch b attends
// to its first cache_seqlens[b] + Lnew keys. Hq is a multiple of Hk (GQA/MQA). Causal and
// window are aligned bottom-right (query i sees key j iff i + off - window_left <= j <=
// i + off + window_right, off = Lk - Lq; causal means window_right = 0); softcap applies
// s = softcap * tanh(s / softcap) to the scaled scores, then ALiBi adds
// -slope * |i + off - j|. out is (B, Lq, Hq, Dv) contiguous, lse (B, Hq, Lq) float32
// (+inf for a row that sees no key, whose output is 0). All strides are in elements; the
// last dim of every tensor is contiguous. D and Dv are at most 256.
#pragma once

#include <cstdint>

namespace fastattn::cuda {

struct KvDecodeParams {
  int dtype = 0;  // csrc/common/dtype.h code of q, caches, new k/v and out
  const void* q = nullptr;
  int64_t q_strides[3] = {0, 0, 0};  // b, s, h
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t k_strides[3] = {0, 0, 0};
  int64_t v_strides[3] = {0, 0, 0};
  const void* k_new = nullptr;  // may be null (nothing appended)
  const void* v_new = nullptr;
  int64_t kn_strides[3] = {0, 0, 0};
  int64_t vn_strides[3] = {0, 0, 0};
  const int* cache_seqlens = nullptr;  // (B,) int32
  const float* alibi_slopes = nullptr;  // (Hq,) or (B, Hq) float32, or null
  int64_t alibi_batch_stride = 0;
  void* out = nullptr;   // (B, Lq, Hq, Dv) contiguous
  float* lse = nullptr;  // (B, Hq, Lq) contiguous
  float* o_partial = nullptr;    // workspace: num_splits * B * Lq * Hq * Dv floats
  float* lse_partial = nullptr;  // workspace: num_splits * B * Lq * Hq floats
  int64_t batch = 0, seqlen_q = 0, heads = 0, heads_k = 0, head_dim = 0, head_dim_v = 0;
  int64_t seqlen_new = 0;
  int64_t max_seqlen_k = 0;  // bound on cache_seqlens[b] + seqlen_new over the batch
  int num_splits = 1;
  float scale = 1.0f;
  float softcap = 0.0f;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
};

// How many splits the kernel uses for these sizes (the workspace is sized from it):
// enough blocks to fill a large GPU, and every split at most kMaxSplitKeys keys.
int split_kv_num_splits(int64_t batch, int64_t seqlen_q, int64_t heads, int64_t max_seqlen_k);

// Appends k_new/v_new (if given), then runs the split kernel and the LSE merge.
void split_kv_decode(const KvDecodeParams& p, void* stream);

constexpr int kMaxSplitKeys = 1024;
constexpr int kMaxDecodeHeadDim = 256;

}  // namespace fastattn::cuda
