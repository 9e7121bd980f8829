// FlashAttention-2 backward on tensor cores (mma.sync m16n8k16): the dK/dV kernel and the
// launcher of the whole backward (flash_bwd_common.cuh has the math and the small kernels,
// flash_bwd_dq.cuh the deterministic dQ pass, bwd_kernel_traits.cuh the tiles).
//
// dK/dV kernel: a CTA owns BN keys of one (batch, key/value head); K and V stay in shared
// memory. It walks the query blocks that can see those keys, for every query head of the
// key/value head's group in turn (GQA/MQA: the group's gradients sum in the same registers,
// no expanded copies and no atomics on dK/dV). Each warp owns 16 keys (and, at D = 256, half
// of the dK/dV columns: bwd_kernel_traits.cuh). Per query block:
//   S^T = K Q^T, dP^T = V dO^T                      (16 keys x BM queries, in registers)
//   P^T = exp2(S^T * scale_log2 - lse_log2)          (recomputed from the saved lse)
//   dS^T = P^T * (dP^T - delta) [* softcap factor]
//   dV += P^T dO, dK += dS^T Q                       (P^T, dS^T C fragments repacked as A)
//   dQ += dS K  (fp32 atomics into the accumulator)  (dS^T through shared memory)
// Visiting query blocks in order puts those that need a mask (the causal diagonal, a window
// edge, the ragged ends) where they fall; every other block runs unmasked.
//
// Pipeline: Q is double-buffered (it is read by the first and the last MMAs of a step), so
// block i + 1's Q (and its lse and delta) is copied during all of step i; dO has one buffer,
// refilled after the barrier that follows dV and dP (during dK and dQ). Two barriers a step:
// the first publishes the landed copies and retires the previous step's dS^T and Q buffer,
// the second retires dO and publishes dS^T.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "../common/cp_async.cuh"
#include "../common/ldmatrix.cuh"
#include "../common/mma.cuh"
#include "../common/platform.cuh"
#include "../common/dispatch.h"
#include "attention_bwd.h"
#include "bwd_kernel_traits.cuh"
#include "flash_bwd_common.cuh"
#include "flash_bwd_dq.cuh"
#include "smem_tiles.cuh"

namespace fastattn::cuda::attn {

// P^T and dS^T of one warp's 16 keys (rows) x BM queries (columns) in place of S^T and dP^T.
// Masked: the tile crosses a mask bound or the end of the keys, so each element is checked;
// Mode: the score's treatment (ScoreMode, prob_and_grad). One instantiation per combination
// (with_score_loop), so the element loop has no branch.
template <bool Masked, int Mode, int BM>
__device__ __forceinline__ void dkdv_probs(const AttnBwdParams& p, float (&s)[BM / 8][4], float (&dp)[BM / 8][4],
                                           const float* s_lse, const float* s_delta, int key_lo, int m0, int t4,
                                           float alibi_a) {
  const int Lk = static_cast<int>(p.seqlen_k);
  const int rel0 = m0 + 2 * t4 + (Lk - static_cast<int>(p.seqlen_q)) - key_lo;  // i + Lk - Lq - j, first element
  if (Mode == kScorePlain && p.alibi_slopes != nullptr) {
    // ALiBi without softcap: the bias added in a pass of its own (one uniform branch).
#pragma unroll
    for (int j = 0; j < BM / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] += alibi_a * fabsf(static_cast<float>(rel0 + j * 8 + (e & 1) - 8 * (e >> 1)));
  }
  // Masked: per key row, the visible query columns [lo, hi] relative to this lane's first column
  // (query i sees key j iff j - off - right <= i <= j - off + left), empty past the keys, so
  // each element compares a compile-time column offset with two bounds.
  int lo[2] = {0, 0}, hi[2] = {0, 0};
  if constexpr (Masked) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int key = key_lo + 8 * half, base = key - p.diag_offset - (m0 + 2 * t4);
      lo[half] = p.window_right >= 0 ? base - p.window_right : -BM;
      hi[half] = key >= Lk ? -BM : (p.window_left >= 0 ? base + p.window_left : BM);
    }
  }
#pragma unroll
  for (int j = 0; j < BM / 8; ++j) {
    const int c = j * 8 + 2 * t4;
    const float lse2[2] = {s_lse[c], s_lse[c + 1]}, delta[2] = {s_delta[c], s_delta[c + 1]};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = j * 8 + (e & 1);
      const bool visible = !Masked || (col >= lo[e >> 1] && col <= hi[e >> 1]);
      prob_and_grad<Mode>(p, s[j][e], dp[j][e], lse2[e & 1], delta[e & 1], visible, alibi_a,
                             rel0 + col - 8 * (e >> 1));
    }
  }
}

// First query row that sees a key >= n0 (key j is visible to query i iff i + off - left <= j
// <= i + off + right): 0 without a right bound.
__device__ __forceinline__ int dkdv_query_begin(const AttnBwdParams& p, int n0) {
  if (p.window_right < 0) return 0;
  const int first = n0 - p.diag_offset - p.window_right;
  return first > 0 ? first : 0;
}

// One past the last query row that sees a key of [n0, n0 + BN): Lq without a left bound.
template <int BN>
__device__ __forceinline__ int dkdv_query_end(const AttnBwdParams& p, int n0) {
  const int Lq = static_cast<int>(p.seqlen_q), Lk = static_cast<int>(p.seqlen_k);
  if (p.window_left < 0) return Lq;
  const int last_key = (n0 + BN < Lk ? n0 + BN : Lk) - 1;
  const int last = last_key - p.diag_offset + p.window_left + 1;
  return last < Lq ? last : Lq;
}

template <typename T, int D, int KeyBlock>
__global__ void __launch_bounds__(AttnBwdTraits<D, KeyBlock>::kThreads) flash_bwd_dkdv_kernel(const AttnBwdParams p) {
  using Tr = AttnBwdTraits<D, KeyBlock>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, NT = Tr::kThreads, SM = Tr::kSubM;
  constexpr int CS = Tr::kColSplit, NC = Tr::kCols, DSC = Tr::kDsCols;
  constexpr int DQS = Tr::kDqSlices, DQC = Tr::kDqCols;
  FA_DYNAMIC_SHARED(T, smem);
  T* sK = smem;                // [BN][D]
  T* sV = sK + BN * D;         // [BN][D]
  T* sQ = sV + BN * D;         // [2][BM][D]
  T* sdO = sQ + 2 * BM * D;    // [BM][D]
  T* sdS = sdO + BM * D;       // [BN][DSC]: dS^T, keys by rows, BM columns used
  float* s_stats = reinterpret_cast<float*>(sdS + BN * DSC);  // [2][lse_log2 BM, delta BM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  // dK/dV: this warp's key group (16 keys) and its first column (a multiple of 64, so that
  // column offsets leave the swizzle's XOR alone); dQ: its 16 query rows and first column.
  const int kgrp = warp / CS, col0 = (warp % CS) * NC;
  const int qgrp = warp / DQS, dq_col0 = (warp % DQS) * DQC;
  const int n0 = static_cast<int>(blockIdx.x) * BN;
  const int hk = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int group = static_cast<int>(p.heads / p.heads_k);
  const int Lq = static_cast<int>(p.seqlen_q), Lk = static_cast<int>(p.seqlen_k);
  const int off = p.diag_offset;
  const int d = static_cast<int>(p.head_dim);

  // Query rows [q_begin, q_end) that see at least one of keys [n0, n0 + BN).
  const int q_begin = dkdv_query_begin(p, n0);
  const int q_end = dkdv_query_end<BN>(p, n0);
  const int m_first = q_begin / BM;
  const int n_blocks = q_end > q_begin ? (q_end + BM - 1) / BM - m_first : 0;
  const int n_steps = n_blocks * group;  // (query head of the group, query block), head-major

  const TileCopy<T, BN, D, NT> kv_copy(tid, d);
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1];
  kv_copy.copy_checked(sK, k, p.k_strides[2], n0, Lk - n0);
  kv_copy.copy_checked(sV, v, p.v_strides[2], n0, Lk - n0);

  auto copy_q = [&](int h, int m0, int buf) {
    const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
    const TileCopy<T, BM, D, NT> q_copy(tid, static_cast<int>(p.head_dim));
    q_copy.copy_checked(sQ + buf * BM * D, q, p.q_strides[2], m0, Lq - m0);
    constexpr int kChunks = BM / 4;  // 16-byte chunks of one statistic
    if (tid < 2 * kChunks) {
      const int which = tid / kChunks, chunk = tid % kChunks;
      const float* src = (which == 0 ? p.lse_log2 : p.delta) + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q_pad;
      cp_async<16>(s_stats + buf * 2 * BM + which * BM + chunk * 4, src + m0 + chunk * 4);
    }
  };
  auto copy_do = [&](int h, int m0) {
    const T* dout = static_cast<const T*>(p.dout) + b * p.do_strides[0] + h * p.do_strides[1];
    const TileCopy<T, BM, D, NT> q_copy(tid, static_cast<int>(p.head_dim));
    q_copy.copy_checked(sdO, dout, p.do_strides[2], m0, Lq - m0);
  };
  // Steps run over (query head of the group, query block), head-major: counters rather than
  // a division by n_blocks each step.
  int h = hk * group, m0 = m_first * BM;
  if (n_steps > 0) {
    copy_q(h, m0, 0);
    copy_do(h, m0);
  }
  cp_async_commit();

  // ldmatrix lanes: A operands (K, V rows = this warp's keys; rows lane % 16, chunk bit
  // lane / 16); B operands read as stored (Q, dO for S^T and dP^T; rows lane % 8 + 8 (lane /
  // 16), chunk bit (lane / 8) % 2) and transposed (dO, Q, K for dV, dK, dQ; rows lane % 16,
  // chunk bit lane / 16); dS^T read transposed as dS's A operand (the second pattern, rows of BM: ds_lane).
  const LaneSwizzle<D> a_lane(lane & 15, lane >> 4, lane);
  const LaneSwizzle<D> b_lane((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1, lane);
  const LaneSwizzle<D> t_lane(lane & 15, lane >> 4, lane);
  // dS^T's lane offset for this warp's 16 queries (chunks 2 qgrp, 2 qgrp + 1), computed once:
  // LaneSwizzle's table indexed by the warp would be a local-memory array.
  const int ds_row = (lane & 7) + ((lane >> 4) << 3);
  const int ds_lane = ds_row * DSC + (((2 * qgrp + ((lane >> 3) & 1)) ^ (ds_row & 7)) << 3);

  float dk[NC / 8][4], dv[NC / 8][4];
#pragma unroll
  for (int j = 0; j < NC / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.0f;
  const int key_lo = n0 + kgrp * 16 + g;  // this lane's key rows: key_lo and key_lo + 8

#pragma unroll 1
  for (int step = 0; step < n_steps; ++step) {
    const int buf = step & 1;
    // The next step's head and first row.
    // (Recomputed from the parameters: a register held across the loop would spill at D = 128.)
    const bool block_wraps = m0 + BM >= dkdv_query_end<BN>(p, n0);
    const int next_h = block_wraps ? h + 1 : h, next_m0 = block_wraps ? m_first * BM : m0 + BM;
    cp_async_wait<0>();  // Q, lse, delta and dO of this step
    __syncthreads();     // ...landed for every thread; every warp is done with the last step's dS^T and Q buffer
    if (step + 1 < n_steps) copy_q(next_h, next_m0, buf ^ 1);
    cp_async_commit();
    const T* sQb = sQ + buf * BM * D;
    const float* s_lse = s_stats + buf * 2 * BM;

    const float alibi_a = alibi_factor(p, b, h);
    // The query block in sub-blocks of SM columns (fewer live score registers at D = 128).
#pragma unroll 1
    for (int sub = 0; sub < BM / SM; ++sub) {
      const int ms = m0 + sub * SM;
      const T* sQs = sQb + sub * SM * D;
      const T* sdOs = sdO + sub * SM * D;
      const float* s_lse_s = s_lse + sub * SM;

      // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys.
      float s[SM / 8][4], dpt[SM / 8][4];
#pragma unroll
      for (int j = 0; j < SM / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, sK + a_lane.at(ks, kgrp * 16));
        ldmatrix_x4(va, sV + a_lane.at(ks, kgrp * 16));
#pragma unroll
        for (int j = 0; j < SM / 8; j += 2) {
          uint32_t qb[4], ob[4];
          ldmatrix_x4(qb, sQs + b_lane.at(ks, j * 8));
          ldmatrix_x4(ob, sdOs + b_lane.at(ks, j * 8));
          const uint32_t q0[2] = {qb[0], qb[1]}, q1[2] = {qb[2], qb[3]};
          const uint32_t o0[2] = {ob[0], ob[1]}, o1[2] = {ob[2], ob[3]};
          mma_m16n8k16<T>(s[j], ka, q0);
          mma_m16n8k16<T>(s[j + 1], ka, q1);
          mma_m16n8k16<T>(dpt[j], va, o0);
          mma_m16n8k16<T>(dpt[j + 1], va, o1);
        }
      }

      // P^T and dS^T; only tiles crossing a bound check each element.
      const bool need_mask = n0 + BN > Lk ||
                             (p.window_right >= 0 && n0 + BN - 1 > ms + off + p.window_right) ||
                             (p.window_left >= 0 && n0 < ms + SM - 1 + off - p.window_left);
      with_score_loop<D == 64>(p, need_mask, [&](auto masked, auto mode) {
        dkdv_probs<decltype(masked)::value, decltype(mode)::value, SM>(p, s, dpt, s_lse_s, s_lse_s + BM, key_lo, ms,
                                                                       t4, alibi_a);
      });

      // Rounded to T and repacked as A fragments (C fragments of n-tiles 2kk, 2kk + 1 = k-step kk).
      uint32_t pa[SM / 16][4], da[SM / 16][4];
#pragma unroll
      for (int kk = 0; kk < SM / 16; ++kk) {
        pa[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        pa[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        pa[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        da[kk][0] = pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]);
        da[kk][1] = pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]);
        da[kk][2] = pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        da[kk][3] = pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
      }

      // dV += P^T dO and dK += dS^T Q over this warp's NC columns.
#pragma unroll
      for (int kk = 0; kk < SM / 16; ++kk)
#pragma unroll
        for (int j = 0; j < NC / 8; j += 2) {
          uint32_t ob[4], qb[4];
          ldmatrix_x4_trans(ob, sdOs + t_lane.at(j / 2, kk * 16) + col0);
          ldmatrix_x4_trans(qb, sQs + t_lane.at(j / 2, kk * 16) + col0);
          const uint32_t o0[2] = {ob[0], ob[1]}, o1[2] = {ob[2], ob[3]};
          const uint32_t q0[2] = {qb[0], qb[1]}, q1[2] = {qb[2], qb[3]};
          mma_m16n8k16<T>(dv[j], pa[kk], o0);
          mma_m16n8k16<T>(dv[j + 1], pa[kk], o1);
          mma_m16n8k16<T>(dk[j], da[kk], q0);
          mma_m16n8k16<T>(dk[j + 1], da[kk], q1);
        }

      // dS^T into shared memory for dQ (the packed A fragments are dS^T's rows, 2 queries a
      // word); with the columns split, the warps of a key group hold the same dS^T and each
      // writes every CS-th k-step of it.
      if (p.dq_accum != nullptr) {
#pragma unroll
        for (int kk = 0; kk < SM / 16; ++kk) {
          if (CS > 1 && kk % CS != warp % CS) continue;
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int row = kgrp * 16 + g + 8 * (r & 1), col = sub * SM + kk * 16 + 8 * (r >> 1) + 2 * t4;
            *reinterpret_cast<uint32_t*>(sdS + swz<DSC>(row, col)) = da[kk][r];
          }
        }
      }
    }
    __syncthreads();  // every warp is done with dO (refilled next) and dS^T is complete
    if (step + 1 < n_steps) copy_do(next_h, next_m0);
    cp_async_commit();

    // dQ += dS K for this warp's 16 query rows and DQC columns, 32 at a time (fewer live registers), added to
    // the fp32 accumulator (padded to whole blocks and to D columns: no bounds to check).
    if (p.dq_accum != nullptr) {
      float* acc_row =
          p.dq_accum + ((static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q_pad + m0 + qgrp * 16 + g) * D + dq_col0;
#pragma unroll
      for (int c0 = 0; c0 < DQC; c0 += 32) {
        float acc[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, sdS + ds_lane + kk * 16 * DSC);
#pragma unroll
          for (int j = 0; j < 4; j += 2) {
            uint32_t kb[4];
            ldmatrix_x4_trans(kb, sK + t_lane.at((c0 + j * 8) / 16, kk * 16) + dq_col0);
            const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
            mma_m16n8k16<T>(acc[j], a, b0);
            mma_m16n8k16<T>(acc[j + 1], a, b1);
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) atomicAdd(acc_row + (e >> 1) * 8 * D + c0 + j * 8 + 2 * t4 + (e & 1), acc[j][e]);
      }
    }
    h = next_h;
    m0 = next_m0;
  }
  cp_async_wait<0>();  // nothing may be in flight when the block exits (K/V when no step ran)

  // dK (times scale) and dV, 2 elements a store; rows past the keys and columns past the head dim skipped.
  T* dkp = static_cast<T*>(p.dk) + b * p.dk_strides[0] + hk * p.dk_strides[1];
  T* dvp = static_cast<T*>(p.dv) + b * p.dv_strides[0] + hk * p.dv_strides[1];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int key = key_lo + 8 * half;
    if (key >= Lk) continue;
#pragma unroll
    for (int j = 0; j < NC / 8; ++j) {
      const int col = col0 + j * 8 + 2 * t4;
      if (col >= d) continue;
      *reinterpret_cast<uint32_t*>(dkp + key * p.dk_strides[2] + col) =
          pack2<T>(dk[j][2 * half] * p.ds_scale, dk[j][2 * half + 1] * p.ds_scale);
      *reinterpret_cast<uint32_t*>(dvp + key * p.dv_strides[2] + col) = pack2<T>(dv[j][2 * half], dv[j][2 * half + 1]);
    }
  }
}

// The backward's launches for one (type, kernel head dim, dK/dV and dq key blocks); p's derived
// fields and workspace pointers set by prepare_bwd_params (bwd_params.h).
template <typename T, int D, int KeyBlock, int DqKeyBlock>
void run_flash_bwd_tiles(const AttnBwdParams& p, void* stream_ptr) {
  using Tr = AttnBwdTraits<D, KeyBlock>;
  using DqTr = AttnBwdDqTraits<D, DqKeyBlock>;
  static_assert(kBwdRowBlock % Tr::kBlockM == 0 && DqTr::kBlockM == kBwdRowBlock,
                "the workspace rows are padded to whole query blocks");
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  const unsigned heads = static_cast<unsigned>(p.heads), batch = static_cast<unsigned>(p.batch);
  if (p.seqlen_q_pad > 0)
    launch(flash_bwd_preprocess_kernel<T, D>, dim3(ceil_div(p.seqlen_q_pad, kBwdRowsPerBlock), heads, batch),
           dim3(kBwdRowThreads), 0, stream, p);
  if (p.seqlen_k > 0) {
    auto kernel = flash_bwd_dkdv_kernel<T, D, KeyBlock>;
    set_max_dynamic_smem(kernel, Tr::kDkdvSmemBytes);
    launch(kernel, dim3(ceil_div(p.seqlen_k, Tr::kBlockN), static_cast<unsigned>(p.heads_k), batch),
           dim3(Tr::kThreads), Tr::kDkdvSmemBytes, stream, p);
  }
  if (p.seqlen_q == 0) return;
  if (p.deterministic) {
    auto kernel = flash_bwd_dq_kernel<T, D, DqKeyBlock>;
    set_max_dynamic_smem(kernel, DqTr::kSmemBytes);
    launch(kernel, dim3(ceil_div(p.seqlen_q, DqTr::kBlockM), heads, batch), dim3(DqTr::kThreads), DqTr::kSmemBytes,
           stream, p);
  } else {
    launch(flash_bwd_convert_dq_kernel<T, D>, dim3(ceil_div(p.seqlen_q, kBwdRowsPerBlock), heads, batch),
           dim3(kBwdRowThreads), 0, stream, p);
  }
}

// The most dynamic shared memory a block of the current device may use (the opt-in limit:
// 163 KB on sm_80, 99 KB on sm_86/sm_89, 227 KB on sm_90). The simulator has no device: it
// reports its own limit unless FASTATTN_SIM_SMEM_PER_BLOCK (bytes) names another, so that the
// tiles of every arch run there.
inline int max_dynamic_smem_per_block() {
#if defined(FASTATTN_SIM)
  const char* env = std::getenv("FASTATTN_SIM_SMEM_PER_BLOCK");
  return env != nullptr ? std::atoi(env) : static_cast<int>(::fastattn::sim::kMaxSmemBytes);
#else
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return bytes;
#endif
}

// The backward for one (type, kernel head dim). Head dim 256 takes the larger tiles (64 keys a
// dK/dV CTA, 32 a dq step) where the device's shared memory holds both, else the smaller ones
// (32 and 16).
template <typename T, int D>
void run_flash_bwd(const AttnBwdParams& p, void* stream_ptr) {
  if constexpr (D <= 128) {
    run_flash_bwd_tiles<T, D, 64, 64>(p, stream_ptr);
  } else {
    constexpr int kWide = AttnBwdTraits<D, 64>::kDkdvSmemBytes > AttnBwdDqTraits<D, 32>::kSmemBytes
                              ? AttnBwdTraits<D, 64>::kDkdvSmemBytes
                              : AttnBwdDqTraits<D, 32>::kSmemBytes;
    if (max_dynamic_smem_per_block() >= kWide)
      run_flash_bwd_tiles<T, D, 64, 32>(p, stream_ptr);
    else
      run_flash_bwd_tiles<T, D, 32, 16>(p, stream_ptr);
  }
}

}  // namespace fastattn::cuda::attn

// One explicit instantiation per generated .cu file (generate_instantiations.py).
#define FA_ATTN_BWD_INSTANTIATE(T, D) \
  template void fastattn::cuda::attn::run_flash_bwd<T, D>(const fastattn::cuda::AttnBwdParams&, void*);
#define FA_ATTN_BWD_EXTERN(T, D) \
  extern template void fastattn::cuda::attn::run_flash_bwd<T, D>(const fastattn::cuda::AttnBwdParams&, void*);
