// The deterministic dQ pass of the attention backward (deterministic=True): no atomics. A CTA
// owns 64 query rows of one (batch, query head), 16 per warp, and walks the key blocks those
// rows can see (K and V double-buffered, the next block copied during the current one; 64
// keys a block, 32 or 16 at D = 256, where the warp's dQ accumulator is 128 floats):
//   S = Q K^T, dP = dO V^T, P = exp2(S * scale_log2 - lse_log2), dS = P (dP - delta)
//   dQ += dS K   (dS's C fragments repacked as A fragments, in registers)
// The dK/dV kernel recomputes the same dS for its own sums; this pass costs one more
// S and dP per (query, key) pair, the price of a fixed summation order.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/cp_async.cuh"
#include "../common/ldmatrix.cuh"
#include "../common/mma.cuh"
#include "../common/platform.cuh"
#include "attention_bwd.h"
#include "bwd_kernel_traits.cuh"
#include "flash_bwd_common.cuh"
#include "smem_tiles.cuh"

namespace fastattn::cuda::attn {

// P and dS of one warp's 16 query rows x BN keys in place of S and dP (rows = queries); Masked
// and Mode as dkdv_probs (flash_bwd.cuh).
template <bool Masked, int Mode, int BN>
__device__ __forceinline__ void dq_probs(const AttnBwdParams& p, float (&s)[BN / 8][4], float (&dp)[BN / 8][4],
                                         const float (&lse2)[2], const float (&delta)[2], int row_lo, int n0, int t4,
                                         float alibi_a) {
  const int Lk = static_cast<int>(p.seqlen_k);
  const int rel0 = row_lo + (Lk - static_cast<int>(p.seqlen_q)) - (n0 + 2 * t4);
  if (Mode == kScorePlain && p.alibi_slopes != nullptr) {
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] += alibi_a * fabsf(static_cast<float>(rel0 + 8 * (e >> 1) - j * 8 - (e & 1)));
  }
  // Masked: per query row, the visible key columns [lo, hi) relative to this lane's first
  // column (as the forward): each element compares a compile-time offset with two bounds.
  int lo[2] = {0, 0}, hi[2] = {0, 0};
  if constexpr (Masked) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row_lo + 8 * half, col0 = n0 + 2 * t4;
      const int right_end = row + p.diag_offset + p.window_right + 1;
      hi[half] = (p.window_right >= 0 && right_end < Lk ? right_end : Lk) - col0;
      lo[half] = p.window_left >= 0 ? row + p.diag_offset - p.window_left - col0 : -1;
    }
  }
#pragma unroll
  for (int j = 0; j < BN / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = j * 8 + (e & 1);
      const bool visible = !Masked || (col >= lo[e >> 1] && col < hi[e >> 1]);
      prob_and_grad<Mode>(p, s[j][e], dp[j][e], lse2[e >> 1], delta[e >> 1], visible, alibi_a,
                             rel0 + 8 * (e >> 1) - col);
    }
}

// KeyBlock: keys per step (AttnBwdDqTraits: 64, or 32 / 16 at D = 256 by shared memory).
template <typename T, int D, int KeyBlock>
__global__ void __launch_bounds__(AttnBwdDqTraits<D, KeyBlock>::kThreads) flash_bwd_dq_kernel(const AttnBwdParams p) {
  using Tr = AttnBwdDqTraits<D, KeyBlock>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, NT = Tr::kThreads;
  FA_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;               // [BM][D]
  T* sdO = sQ + BM * D;       // [BM][D]
  T* sK = sdO + BM * D;       // [2][BN][D]
  T* sV = sK + 2 * BN * D;    // [2][BN][D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int m0 = static_cast<int>(blockIdx.x) * BM;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int hk = h / static_cast<int>(p.heads / p.heads_k);
  const int Lq = static_cast<int>(p.seqlen_q), Lk = static_cast<int>(p.seqlen_k);
  const int off = p.diag_offset;
  const int d = static_cast<int>(p.head_dim);

  // Key blocks [t_begin, n_tiles) that the CTA's rows can see (as the forward).
  const int last_row = (m0 + BM < Lq ? m0 + BM : Lq) - 1;
  int kv_end = Lk, kv_begin = 0;
  if (p.window_right >= 0) {
    const int last_visible = last_row + off + p.window_right;
    kv_end = last_visible + 1 < Lk ? last_visible + 1 : Lk;
  }
  if (p.window_left >= 0) {
    const int first_visible = m0 + off - p.window_left;
    kv_begin = first_visible > 0 ? first_visible : 0;
  }
  const bool any_key = kv_end > kv_begin;
  const int n_tiles = any_key ? (kv_end + BN - 1) / BN : 0;
  const int t_begin = any_key ? kv_begin / BN : 0;

  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_strides[0] + h * p.do_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1];
  const TileCopy<T, BM, D, NT> q_copy(tid, d);
  const TileCopy<T, BN, D, NT> kv_copy(tid, d);
  auto copy_kv = [&](int t, int stage) {
    const int n0 = t * BN;
    kv_copy.copy_checked(sK + stage * BN * D, k, p.k_strides[2], n0, Lk - n0);
    kv_copy.copy_checked(sV + stage * BN * D, v, p.v_strides[2], n0, Lk - n0);
  };
  q_copy.copy_checked(sQ, q, p.q_strides[2], m0, Lq - m0);
  q_copy.copy_checked(sdO, dout, p.do_strides[2], m0, Lq - m0);
  if (t_begin < n_tiles) copy_kv(t_begin, 0);
  cp_async_commit();

  // This lane's rows row_lo and row_lo + 8; their statistics (padded rows: +inf and 0).
  const int row_lo = m0 + warp * 16 + g;
  const int64_t srow = (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q_pad + row_lo;
  const float lse2[2] = {p.lse_log2[srow], p.lse_log2[srow + 8]};
  const float delta[2] = {p.delta[srow], p.delta[srow + 8]};
  const float alibi_a = alibi_factor(p, b, h);

  const LaneSwizzle<D> a_lane(lane & 15, lane >> 4, lane);
  const LaneSwizzle<D> b_lane((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1, lane);
  const LaneSwizzle<D> t_lane(lane & 15, lane >> 4, lane);

  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;

#pragma unroll 1
  for (int t = t_begin; t < n_tiles; ++t) {
    const int stage = (t - t_begin) & 1, n0 = t * BN;
    cp_async_wait<0>();  // K/V block t (and, the first time, Q and dO)
    __syncthreads();     // ...landed for every thread; every warp is done with block t - 1's stage
    if (t + 1 < n_tiles) copy_kv(t + 1, stage ^ 1);
    cp_async_commit();
    const T* sKs = sK + stage * BN * D;
    const T* sVs = sV + stage * BN * D;

    float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t qa[4], oa[4];
      ldmatrix_x4(qa, sQ + a_lane.at(ks, warp * 16));
      ldmatrix_x4(oa, sdO + a_lane.at(ks, warp * 16));
#pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        uint32_t kb[4], vb[4];
        ldmatrix_x4(kb, sKs + b_lane.at(ks, j * 8));
        ldmatrix_x4(vb, sVs + b_lane.at(ks, j * 8));
        const uint32_t k0[2] = {kb[0], kb[1]}, k1[2] = {kb[2], kb[3]};
        const uint32_t v0[2] = {vb[0], vb[1]}, v1[2] = {vb[2], vb[3]};
        mma_m16n8k16<T>(s[j], qa, k0);
        mma_m16n8k16<T>(s[j + 1], qa, k1);
        mma_m16n8k16<T>(dp[j], oa, v0);
        mma_m16n8k16<T>(dp[j + 1], oa, v1);
      }
    }

    const bool need_mask = n0 + BN > Lk ||
                           (p.window_right >= 0 && n0 + BN - 1 > m0 + off + p.window_right) ||
                           (p.window_left >= 0 && n0 < m0 + BM - 1 + off - p.window_left);
    with_score_loop<D == 64>(p, need_mask, [&](auto masked, auto mode) {
      dq_probs<decltype(masked)::value, decltype(mode)::value, BN>(p, s, dp, lse2, delta, row_lo, n0, t4, alibi_a);
    });

    // dQ += dS K: dS's C fragments (keys 16 kk ..) are the A fragment of k-step kk.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(dp[2 * kk][0], dp[2 * kk][1]), pack2<T>(dp[2 * kk][2], dp[2 * kk][3]),
                             pack2<T>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                             pack2<T>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        uint32_t kb[4];
        ldmatrix_x4_trans(kb, sKs + t_lane.at(j / 2, kk * 16));
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
        mma_m16n8k16<T>(dq[j], a, b0);
        mma_m16n8k16<T>(dq[j + 1], a, b1);
      }
    }
  }
  cp_async_wait<0>();  // nothing in flight at exit (Q and dO when no key block ran)

  T* dqp = static_cast<T*>(p.dq) + b * p.dq_strides[0] + h * p.dq_strides[1];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row_lo + 8 * half;
    if (row >= Lq) continue;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int col = j * 8 + 2 * t4;
      if (col >= d) continue;
      *reinterpret_cast<uint32_t*>(dqp + row * p.dq_strides[2] + col) =
          pack2<T>(dq[j][2 * half] * p.ds_scale, dq[j][2 * half + 1] * p.ds_scale);
    }
  }
}

}  // namespace fastattn::cuda::attn
