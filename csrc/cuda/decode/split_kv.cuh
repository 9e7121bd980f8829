// Split-KV ("flash-decoding") attention for a handful of query rows against a long KV
// cache. Decoding has too few query rows to fill a GPU with one block per row, so each
// row's keys are cut into splits, one block per (row, split):
//
//   1. scores: q (in shared memory as float) dotted with each key of the split, one key
//      per thread (16-byte loads along the head dim), scaled, soft-capped, ALiBi-biased,
//      kept in shared memory; block max m.
//   2. p_j = exp(s_j - m), block sum l.
//   3. o = sum_j p_j v_j / l: warps take alternate keys, lanes take head-dim columns
//      (coalesced rows of v), warps merged through shared memory.
//   Each split writes o (float) and its LSE m + log(l) to a workspace.
//
// The combine kernel merges the splits of a row with the log-sum-exp rule:
//   lse = log(sum_s exp(lse_s)),  out = sum_s exp(lse_s - lse) * o_s
// (an empty split has lse_s = -inf and weight 0). A row whose every split is empty sees no
// key: out = 0 and lse = +inf (flash-attn's convention).
// A separate kernel first appends the new keys/values to the caches in place.
#pragma once

#include "../common/reduce.cuh"
#include "../common/vec.cuh"
#include "decode.h"

namespace fastattn::cuda {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeColsPerLane = kMaxDecodeHeadDim / 32;

// The keys query row `qi` of batch `b` may see: [lo, hi] (empty when lo > hi).
struct KeyRange {
  long long lo, hi, seqlen_k, offset;
};

__device__ __forceinline__ KeyRange key_range(const KvDecodeParams& p, long long b, long long qi) {
  KeyRange r;
  r.seqlen_k = static_cast<long long>(p.cache_seqlens[b]) + p.seqlen_new;
  r.offset = r.seqlen_k - p.seqlen_q;  // bottom-right alignment
  const long long wr = p.causal ? 0 : p.window_right;
  r.lo = p.window_left >= 0 ? qi + r.offset - p.window_left : 0;
  r.hi = wr >= 0 ? qi + r.offset + wr : r.seqlen_k - 1;
  if (r.lo < 0) r.lo = 0;
  if (r.hi > r.seqlen_k - 1) r.hi = r.seqlen_k - 1;
  return r;
}

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) kvcache_append_kernel(KvDecodeParams p) {
  // One block per (b, new token, kv head): copy its key and value rows.
  const long long idx = blockIdx.x;
  const long long h = idx % p.heads_k, i = (idx / p.heads_k) % p.seqlen_new, b = idx / (p.heads_k * p.seqlen_new);
  const long long pos = static_cast<long long>(p.cache_seqlens[b]) + i;
  const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_strides[0] + i * p.kn_strides[1] + h * p.kn_strides[2];
  const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_strides[0] + i * p.vn_strides[1] + h * p.vn_strides[2];
  T* kc = static_cast<T*>(p.k_cache) + b * p.k_strides[0] + pos * p.k_strides[1] + h * p.k_strides[2];
  T* vc = static_cast<T*>(p.v_cache) + b * p.v_strides[0] + pos * p.v_strides[1] + h * p.v_strides[2];
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) kc[d] = kn[d];
  for (int d = threadIdx.x; d < p.head_dim_v; d += blockDim.x) vc[d] = vn[d];
}

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) split_kv_decode_kernel(KvDecodeParams p) {
  constexpr int N = kVec16<T>;
  __shared__ float q_s[kMaxDecodeHeadDim];
  __shared__ float scores[kMaxSplitKeys];
  __shared__ float partial_o[kDecodeWarps][kMaxDecodeHeadDim];
  __shared__ float scratch[32];

  // Row order (b, qi, h) matches out's (B, Lq, Hq) layout.
  const long long row = blockIdx.x;
  const long long h = row % p.heads, qi = (row / p.heads) % p.seqlen_q, b = row / (p.heads * p.seqlen_q);
  const long long hk = h / (p.heads / p.heads_k);
  const int split = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int D = static_cast<int>(p.head_dim), Dv = static_cast<int>(p.head_dim_v);

  const KeyRange range = key_range(p, b, qi);
  const long long nkeys = range.hi >= range.lo ? range.hi - range.lo + 1 : 0;
  const long long per_split = (nkeys + p.num_splits - 1) / p.num_splits;
  const long long k0 = range.lo + split * per_split;
  long long k1 = k0 + per_split;  // exclusive
  if (k1 > range.hi + 1) k1 = range.hi + 1;
  const int n = k1 > k0 ? static_cast<int>(k1 - k0) : 0;

  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + qi * p.q_strides[1] + h * p.q_strides[2];
  for (int d = tid; d < D; d += blockDim.x) q_s[d] = to_float(q[d]);
  __syncthreads();

  const T* kbase = static_cast<const T*>(p.k_cache) + b * p.k_strides[0] + hk * p.k_strides[2];
  const bool k_vec = D % N == 0 && p.k_strides[1] % N == 0 && is_aligned(kbase, 16);
  const float slope = p.alibi_slopes ? p.alibi_slopes[b * p.alibi_batch_stride + h] : 0.0f;

  float local_max = -INFINITY;
  for (int j = tid; j < n; j += blockDim.x) {
    const long long key = k0 + j;
    const T* krow = kbase + key * p.k_strides[1];
    float dot = 0.0f;
    if (k_vec) {
      for (int d = 0; d < D; d += N) {
        float kv[N];
        load_float<T, N>(krow + d, kv);
#pragma unroll
        for (int i = 0; i < N; ++i) dot += q_s[d + i] * kv[i];
      }
    } else {
      for (int d = 0; d < D; ++d) dot += q_s[d] * to_float(krow[d]);
    }
    float s = dot * p.scale;
    if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
    if (p.alibi_slopes) {
      const long long dist = qi + range.offset - key;
      s -= slope * static_cast<float>(dist < 0 ? -dist : dist);
    }
    scores[j] = s;
    local_max = fmaxf(local_max, s);
  }
  const float m = block_allreduce_max(local_max, scratch);

  float local_sum = 0.0f;
  for (int j = tid; j < n; j += blockDim.x) {
    const float e = __expf(scores[j] - m);
    scores[j] = e;
    local_sum += e;
  }
  const float l = block_allreduce_sum(local_sum, scratch);  // its barriers also publish scores[]

  // o = sum_j p_j v_j: warp w takes keys w, w + 4, ...; lane takes columns lane + 32 c.
  const T* vbase = static_cast<const T*>(p.v_cache) + b * p.v_strides[0] + hk * p.v_strides[2];
  float acc[kDecodeColsPerLane];
#pragma unroll
  for (int c = 0; c < kDecodeColsPerLane; ++c) acc[c] = 0.0f;
  for (int j = warp; j < n; j += kDecodeWarps) {
    const T* vrow = vbase + (k0 + j) * p.v_strides[1];
    const float pj = scores[j];
#pragma unroll
    for (int c = 0; c < kDecodeColsPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < Dv) acc[c] += pj * to_float(vrow[d]);
    }
  }
#pragma unroll
  for (int c = 0; c < kDecodeColsPerLane; ++c) {
    const int d = lane + 32 * c;
    if (d < Dv) partial_o[warp][d] = acc[c];
  }
  __syncthreads();

  const long long rows = p.batch * p.seqlen_q * p.heads;
  const long long slot = static_cast<long long>(split) * rows + row;
  const bool empty = n == 0 || m == -INFINITY;
  const float inv = empty ? 0.0f : 1.0f / l;
  for (int d = tid; d < Dv; d += blockDim.x) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) o += partial_o[w][d];
    p.o_partial[slot * Dv + d] = o * inv;
  }
  if (tid == 0) p.lse_partial[slot] = empty ? -INFINITY : m + __logf(l);
}

template <typename T>
__global__ void __launch_bounds__(kDecodeThreads) split_kv_combine_kernel(KvDecodeParams p) {
  const long long row = blockIdx.x;
  const long long rows = p.batch * p.seqlen_q * p.heads;
  const long long h = row % p.heads, qi = (row / p.heads) % p.seqlen_q, b = row / (p.heads * p.seqlen_q);
  const int Dv = static_cast<int>(p.head_dim_v);

  // Every thread reads the few split LSEs itself: no shared memory, no barrier.
  float lmax = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) lmax = fmaxf(lmax, p.lse_partial[s * rows + row]);
  float total = 0.0f;
  if (lmax != -INFINITY)
    for (int s = 0; s < p.num_splits; ++s) total += __expf(p.lse_partial[s * rows + row] - lmax);
  const bool empty = lmax == -INFINITY;
  const float lse = empty ? INFINITY : lmax + __logf(total);

  T* out = static_cast<T*>(p.out) + row * Dv;
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float o = 0.0f;
    if (!empty)
      for (int s = 0; s < p.num_splits; ++s) {
        const float ls = p.lse_partial[s * rows + row];
        if (ls != -INFINITY) o += __expf(ls - lse) * p.o_partial[(s * rows + row) * Dv + d];
      }
    out[d] = from_float<T>(o);
  }
  if (threadIdx.x == 0) p.lse[(b * p.heads + h) * p.seqlen_q + qi] = lse;
}

}  // namespace fastattn::cuda
