// FlashAttention-2 forward on tensor cores (mma.sync m16n8k16), for fp16 and bf16.
//
// Math: for each query row i, out_i = sum_j softmax_j(scale * q_i . k_j) v_j over the visible
// keys j, computed in one pass over key tiles with the online softmax: a running row max m
// and row sum l, the accumulator rescaled by exp(m_old - m_new) whenever the max grows
// (Dao, "FlashAttention-2", 2023, algorithm 1). lse_i = scale * m + log(l).
//
// Work split (kernel_traits.cuh): a CTA takes kBlockM query rows of one (batch, head); each of
// its 4 warps owns kMTiles m16 tiles of rows, so the score tile S = Q K^T and the accumulator
// O live in mma C fragments in registers, and P = exp(S) is re-packed from its C fragments
// straight into the A fragments of O += P V (the m16n8k16 C and A layouts agree row-wise),
// never touching shared memory. With two m16 tiles per warp every K and V fragment a warp
// loads with ldmatrix feeds two MMAs.
//
// Pipeline (FlashAttention-2's): key tiles are visited from the last to the first. The
// prologue copies Q and the last K and V tiles (the only ones that can run past the end of the
// sequence: their rows there are zero-filled). In the step for tile t, V_t is copied while
// S = Q K_t^T is computed, and K_{t-1} while the softmax and O += P V_t run: one buffer each
// for K and V, two barriers a step. Visiting the tiles backwards puts the ones that need a
// mask (the ragged end, the causal diagonal) first; every later tile is interior and runs
// without masking.
//
// Shared-memory swizzle: a row of D 16-bit elements is D / 8 chunks of 16 bytes; element
// (r, c) is stored in chunk (c / 8) XOR (r % 8) of row r. ldmatrix reads 8 rows of one
// logical chunk at a time: those land in 8 distinct physical chunks (D / 8 >= 8), i.e.
// the 8 x 16 bytes span all 32 banks once, so neither ldmatrix nor the 16-byte cp.async
// stores conflict.
//
// Epilogue: O is normalised, rounded and written into Q's shared-memory tile, then stored
// to global memory in 16-byte chunks, consecutive threads on consecutive chunks of a row.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/convert.cuh"
#include "../common/cp_async.cuh"
#include "../common/dispatch.h"
#include "../common/fast_math.cuh"
#include "../common/ldmatrix.cuh"
#include "../common/mma.cuh"
#include "../common/platform.cuh"
#include "../common/vec.cuh"
#include "attention.h"
#include "kernel_traits.cuh"
#include "smem_tiles.cuh"

namespace fastattn::cuda::attn {

template <typename T, int D, bool Causal>
__global__ void __launch_bounds__(AttnFwdTraits<D>::kThreads)
    flash_fwd_kernel(const AttnFwdParams p) {
  using Tr = AttnFwdTraits<D>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, NT = Tr::kThreads, MT = Tr::kMTiles;
  constexpr int WR = 16 * MT;  // query rows per warp
  FA_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;         // [BM][D], then the output tile
  T* sK = sQ + BM * D;  // [BN][D]
  T* sV = sK + BN * D;  // [BN][D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int m_block = blockIdx.x;
  // Grid (query blocks, heads, batch): no division to find the head and batch, and 32-bit
  // indices (the launcher checks both < 2^16).
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int hk = h / static_cast<int>(p.heads / p.heads_k);
  // 32-bit sequence indices (the launcher checks the lengths fit): fewer live registers.
  const int Lq = static_cast<int>(p.seqlen_q), Lk = static_cast<int>(p.seqlen_k);
  // Key j is visible to query i iff i + off - left <= j <= i + off + right, each bound only
  // where it is set: right = 0 when causal, else the window's (< 0: none); left the window's.
  const int off = p.diag_offset;
  const bool has_right = Causal || p.window_right >= 0;
  const bool has_left = p.window_left >= 0;
  const int m0 = m_block * BM;

  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1];

  // Key tiles [t_begin, n_tiles): from the first key the CTA's first row can see (a left
  // window bound) to the last one its last real row can see (a right bound).
  const int last_row = (m0 + BM < Lq ? m0 + BM : Lq) - 1;
  int kv_end = Lk, kv_begin = 0;
  if (has_right) {
    const int last_visible = last_row + off + (Causal ? 0 : p.window_right);
    kv_end = last_visible + 1 < Lk ? last_visible + 1 : Lk;
  }
  if (has_left) {
    const int first_visible = m0 + off - p.window_left;
    kv_begin = first_visible > 0 ? first_visible : 0;
  }
  const bool any_key = kv_end > kv_begin;
  const int n_tiles = any_key ? (kv_end + BN - 1) / BN : 0;
  const int t_begin = any_key ? kv_begin / BN : 0;

  // The head dim: D, or less (a multiple of 8), zero-filled up to D in shared memory, so the
  // padded columns add 0 to Q K^T and give output columns that are not stored.
  const int d = static_cast<int>(p.head_dim);
  const TileCopy<T, BM, D, NT> q_copy(tid, d);
  const TileCopy<T, BN, D, NT> kv_copy(tid, d);
  q_copy.copy_checked(sQ, q, p.q_strides[2], m0, Lq - m0);
  if (n_tiles > 0) kv_copy.copy_checked(sK, k, p.k_strides[2], (n_tiles - 1) * BN, Lk - (n_tiles - 1) * BN);
  cp_async_commit();

  // ldmatrix row addresses: Q (A operand) rows lane % 16, chunk bit lane / 16; K (B operand,
  // non-transposed) rows lane % 8 + 8 * (lane / 16), chunk bit (lane / 8) % 2; V (B operand,
  // transposed) rows lane % 16, chunk bit lane / 16.
  const LaneSwizzle<D> q_lane(lane & 15, lane >> 4, lane);
  const LaneSwizzle<D> k_lane((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1, lane);
  const LaneSwizzle<D> v_lane(lane & 15, lane >> 4, lane);

  // Q's A fragments, loaded once when they fit in registers (else re-read every step).
  uint32_t qf[Tr::kQInRegs ? MT : 1][Tr::kQInRegs ? D / 16 : 1][4];
  if constexpr (Tr::kQInRegs) {
    cp_async_wait<0>();
    __syncthreads();  // Q (and the first K tile) landed for every thread
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(qf[mt][ks], sQ + q_lane.at(ks, warp * WR + mt * 16));
  }

  // This lane's rows (within the sequence) for C fragments c[0..1] (lo) and c[2..3] (hi) of m-tile mt:
  // row_lo + 16 * mt and row_lo + 16 * mt + 8.
  const int row_lo = m0 + warp * WR + g;
  float o[MT][D / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
  float row_max[MT][2], row_sum[MT][2];  // row_sum: this lane's partial sums, reduced over the quad at the end
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) row_max[mt][0] = row_max[mt][1] = -INFINITY, row_sum[mt][0] = row_sum[mt][1] = 0.0f;

#pragma unroll 1
  for (int t = n_tiles - 1; t >= t_begin; --t) {
    const int n0 = t * BN;
    cp_async_wait<0>();  // K tile t
    __syncthreads();     // ...landed for every thread, and every warp is done with V tile t + 1
    // V tile t: only the last one can run past the end of the sequence.
    kv_copy.copy_checked(sV, v, p.v_strides[2], n0, Lk - n0);
    cp_async_commit();

    // S = Q K^T for this warp's rows.
    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Tr::kQInRegs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mt][r] = qf[mt][ks][r];
        } else {
          ldmatrix_x4(a[mt], sQ + q_lane.at(ks, warp * WR + mt * 16));
        }
      }
#pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        // Matrices (keys j*8.., k), (j*8.., k+8), (j*8+8.., k), (j*8+8.., k+8) for k = 16 ks.
        uint32_t kb[4];
        ldmatrix_x4(kb, sK + k_lane.at(ks, j * 8));
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_m16n8k16<T>(s[mt][j], a[mt], b0);
          mma_m16n8k16<T>(s[mt][j + 1], a[mt], b1);
        }
      }
    }

    if (p.softcap_outer > 0.0f) {
      // Softcapping, before the masks: scale * s' == softcap * tanh(scale * s / softcap).
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][j][e] = p.softcap_outer * tanhf(s[mt][j][e] * p.softcap_inner);
    }

    if (p.alibi_slopes != nullptr) {
      // ALiBi, after the softcap: scale * s gains -slope * |i + Lk - Lq - j|. The slope is read
      // here (cached, one per CTA) rather than held in a register across the loop.
      const float a = p.alibi_slopes[blockIdx.z * p.alibi_batch_stride + blockIdx.y] * p.alibi_scale;
      const int rel0 = row_lo + (Lk - Lq) - (n0 + 2 * t4);  // i - j of this lane's first element
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int rel = rel0 + 16 * mt + 8 * (e >> 1) - (j * 8 + (e & 1));
            s[mt][j][e] += a * fabsf(static_cast<float>(rel));
          }
    }

    // Mask keys past the end, right of the right bound (the causal diagonal) of the CTA's first
    // row or left of the left bound of its last row: only the tiles that reach there (the first
    // steps, and with a left window the last ones) do this.
    const bool need_mask = n0 + BN > Lk || (has_right && n0 + BN - 1 > m0 + off + (Causal ? 0 : p.window_right)) ||
                           (has_left && n0 < last_row + off - p.window_left);
    if (need_mask) {
      // Per row, the first visible and the first invisible key, relative to this lane's first
      // column: each element then compares a compile-time column offset with them.
      const int col0 = n0 + 2 * t4;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = row_lo + 16 * mt + 8 * half;
          const int right_end = row + off + (Causal ? 0 : p.window_right) + 1;
          const int end = (has_right && right_end < Lk ? right_end : Lk) - col0;
          const int begin = has_left ? row + off - p.window_left - col0 : -1;
#pragma unroll
          for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              if (j * 8 + e >= end || j * 8 + e < begin) s[mt][j][2 * half + e] = -INFINITY;
        }
    }

    cp_async_wait<0>();  // V tile t
    __syncthreads();     // ...landed for every thread, and every warp is done with K tile t
    // K tile t - 1 (interior: every row exists); after the last tile, a zero-fill nobody reads.
    kv_copy.copy_all(sK, k, p.k_strides[2], t > t_begin ? n0 - BN : n0, t > t_begin);
    cp_async_commit();

    // Online softmax: new row maxima (the quad's 4 lanes share a row), rescale, exponentiate.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[mt][r];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row with no visible key so far keeps max -inf; subtract 0 instead so exp2 gives 0, not NaN.
        // exp(x * scale) == exp2(x * scale_log2), scale_log2 read from the parameters at each use.
        const float mx_scaled = mx == -INFINITY ? 0.0f : mx * p.scale_log2;
        const float corr = exp2_approx(row_max[mt][r] * p.scale_log2 - mx_scaled);
        row_max[mt][r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          s[mt][j][2 * r] = exp2_approx(s[mt][j][2 * r] * p.scale_log2 - mx_scaled);
          s[mt][j][2 * r + 1] = exp2_approx(s[mt][j][2 * r + 1] * p.scale_log2 - mx_scaled);
          sum += s[mt][j][2 * r] + s[mt][j][2 * r + 1];
        }
        row_sum[mt][r] = row_sum[mt][r] * corr + sum;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[mt][j][2 * r] *= corr;
          o[mt][j][2 * r + 1] *= corr;
        }
      }

    // O += P V: the C fragments of S for keys kk..kk+15 are the A fragment of this k-step.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        // V is (key, dim) in shared memory; .trans yields the column-major B fragments.
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, sV + v_lane.at(j / 2, kk * 16));
        const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_m16n8k16<T>(o[mt][j], a[mt], b0);
          mma_m16n8k16<T>(o[mt][j + 1], a[mt], b1);
        }
      }
    }
  }
  cp_async_wait<0>();  // the last (zero-fill) copy, or Q's when no key tile ran
  __syncthreads();     // ...landed for every thread before Q's tile takes the output

  // Finish: full row sums over the quad, normalise, stage the output in shared memory, store lse.
  T* sO = sQ;
  float* lse = p.lse + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int tile_row = warp * WR + mt * 16 + r * 8 + g;
      const int row = m0 + tile_row;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no visible key: output 0
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(sO + swz<D>(tile_row, j * 8 + 2 * t4)) =
            pack2<T>(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
      if (t4 == 0 && row < Lq)
        lse[row] = l > 0.0f ? row_max[mt][r] * p.scale + logf(l) : INFINITY;
    }
  __syncthreads();  // the output tile is complete (each row was written by one warp, is read by others)

  T* out = static_cast<T*>(p.out) + b * p.o_strides[0] + h * p.o_strides[1];
  constexpr int kCPR = D / 8, kRowStep = NT / kCPR;
  const int orow = tid / kCPR;
  const uint32_t ocol = static_cast<uint32_t>(tid % kCPR) * 8u;
#pragma unroll
  for (int i = 0; i < BM / kRowStep; ++i) {
    const int r = orow + i * kRowStep;
    if (m0 + r < Lq && static_cast<int>(ocol) < d)
      store_vec<T, 8>(out + static_cast<int64_t>(m0 + r) * p.o_strides[2] + ocol, load_vec<T, 8>(sO + swz<D>(r, static_cast<int>(ocol))));
  }
}

template <typename T, int D, bool Causal>
void run_flash_fwd(const AttnFwdParams& params, void* stream) {
  using Tr = AttnFwdTraits<D>;
  AttnFwdParams p = params;
  set_derived_fields(p);
  auto kernel = flash_fwd_kernel<T, D, Causal>;
  set_max_dynamic_smem(kernel, Tr::kSmemBytes);
  const dim3 grid(ceil_div(p.seqlen_q, Tr::kBlockM), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  launch(kernel, grid, dim3(Tr::kThreads), Tr::kSmemBytes, static_cast<cudaStream_t>(stream), p);
}

}  // namespace fastattn::cuda::attn

// One explicit instantiation per generated .cu file (generate_instantiations.py).
#define FA_ATTN_FWD_INSTANTIATE(T, D, CAUSAL) \
  template void fastattn::cuda::attn::run_flash_fwd<T, D, CAUSAL>(const fastattn::cuda::AttnFwdParams&, void*);
#define FA_ATTN_FWD_EXTERN(T, D, CAUSAL) \
  extern template void fastattn::cuda::attn::run_flash_fwd<T, D, CAUSAL>(const fastattn::cuda::AttnFwdParams&, void*);
