// FlashAttention-2 forward on tensor cores (mma.sync m16n8k16), for fp16 and bf16.
//
// Math: for each query row i, out_i = sum_j softmax_j(scale * q_i . k_j) v_j over the visible
// keys j, computed in one pass over key tiles with the online softmax: a running row max m
// and row sum l, the accumulator rescaled by exp(m_old - m_new) whenever the max grows
// (Dao, "FlashAttention-2", 2023, algorithm 1). lse_i = scale * m + log(l).
//
// Work split: a CTA takes kBlockM = 64 query rows of one (batch, head); each of its 4 warps
// owns 16 rows, so the score tile S = Q K^T (16 x kBlockN per warp) and the accumulator
// O (16 x D) live in mma C fragments in registers, and P = exp(S) is re-packed from its C
// fragments straight into the A fragments of O += P V (the m16n8k16 C and A layouts agree
// row-wise), never touching shared memory. Q stays in shared memory; K and V tiles are
// double-buffered: tile t + 1 is fetched with cp.async while tile t is multiplied.
//
// Shared-memory swizzle: a row of D 16-bit elements is D / 8 chunks of 16 bytes; element
// (r, c) is stored in chunk (c / 8) XOR (r % 8) of row r. ldmatrix reads 8 rows of one
// logical chunk at a time: those land in 8 distinct physical chunks (D / 8 >= 8), i.e.
// the 8 x 16 bytes span all 32 banks once, so neither ldmatrix nor the 16-byte cp.async
// stores conflict.
//
// Causal masking and block skipping: key tiles entirely above the diagonal are never
// loaded; only tiles crossing the diagonal or the end of the sequence evaluate the mask.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/convert.cuh"
#include "../common/cp_async.cuh"
#include "../common/dispatch.h"
#include "../common/ldmatrix.cuh"
#include "../common/mma.cuh"
#include "../common/platform.cuh"
#include "attention.h"
#include "kernel_traits.cuh"

namespace fastattn::cuda::attn {

// Offset (in elements) of element (row, col) of a swizzled tile whose rows hold D elements.
template <int D>
__device__ __forceinline__ int swz(int row, int col) {
  return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// The ldmatrix addresses of one lane, precomputed so that the unrolled loops add only
// compile-time offsets. Every ldmatrix row this lane addresses is `row_lane` plus a multiple
// of 8 (so row % 8 == lane % 8), and its 16-byte chunk is 2 * s + `chunk_bit` for step s of
// a 16-wide k (or n) loop. XOR only touches the low 3 chunk bits, so
//   swz(row, 8 * (2 s + bit)) = row * D + 64 * (s / 4) + 8 * ((2 * (s % 4) + bit) ^ (row % 8)),
// and four per-lane offsets (s % 4) cover every step: off(s) = base[s % 4] + 64 * (s / 4).
template <int D>
struct LaneSwizzle {
  int base[4];
  __device__ __forceinline__ LaneSwizzle(int row_lane, int chunk_bit, int lane) {
#pragma unroll
    for (int i = 0; i < 4; ++i) base[i] = row_lane * D + ((((2 * i + chunk_bit) ^ (lane & 7))) << 3);
  }
  // Offset of step s's chunk in the row `row_const` (a multiple of 8) rows below row_lane.
  __device__ __forceinline__ int at(int s, int row_const) const { return base[s & 3] + 64 * (s >> 2) + row_const * D; }
};

// Copies rows [row0, row0 + Rows) of a (seq, D) matrix (row stride `stride`) into a swizzled
// tile; rows at or past `rows_valid` are zero-filled (and never read).
template <typename T, int Rows, int D, int Threads>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t stride, int row0, int rows_valid,
                                          int tid) {
  constexpr int kChunks = Rows * D / 8;
  static_assert(kChunks % Threads == 0, "tile chunks divide among the threads");
#pragma unroll
  for (int i = 0; i < kChunks / Threads; ++i) {
    const int chunk = tid + i * Threads;
    const int r = chunk / (D / 8), c = (chunk % (D / 8)) * 8;
    const bool valid = row0 + r < rows_valid;
    const T* from = valid ? src + static_cast<int64_t>(row0 + r) * stride + c : src;
    cp_async_zfill<16>(tile + swz<D>(r, c), from, valid);
  }
}

constexpr float kLog2e = 1.4426950408889634f;

template <typename T, int D, bool Causal>
__global__ void __launch_bounds__(AttnFwdTraits<D>::kThreads)
    flash_fwd_kernel(const AttnFwdParams p) {
  using Tr = AttnFwdTraits<D>;
  constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, NT = Tr::kThreads;
  FA_DYNAMIC_SHARED(T, smem);
  T* sQ = smem;
  T* sK = sQ + BM * D;  // [2][BN][D]
  T* sV = sK + 2 * BN * D;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int m_block = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const int64_t hk = h / (p.heads / p.heads_k);
  // 32-bit sequence indices (the launcher checks the lengths fit): fewer live registers.
  const int Lq = static_cast<int>(p.seqlen_q), Lk = static_cast<int>(p.seqlen_k);
  const int off = (Causal && p.bottom_right) ? Lk - Lq : 0;
  const int m0 = m_block * BM;

  const T* q = static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1];

  // Key tiles [0, n_tiles): causal stops after the last key the CTA's last real row can see.
  int kv_end = Lk;
  if (Causal) {
    const int last_row = (m0 + BM < Lq ? m0 + BM : Lq) - 1;
    const int last_visible = last_row + off;
    kv_end = last_visible + 1 < Lk ? last_visible + 1 : Lk;
    if (kv_end < 0) kv_end = 0;
  }
  const int n_tiles = (kv_end + BN - 1) / BN;

  load_tile<T, BM, D, NT>(sQ, q, p.q_strides[2], m0, Lq, tid);
  if (n_tiles > 0) {
    load_tile<T, BN, D, NT>(sK, k, p.k_strides[2], 0, Lk, tid);
    load_tile<T, BN, D, NT>(sV, v, p.v_strides[2], 0, Lk, tid);
  }
  cp_async_commit();

  // ldmatrix row addresses: Q (A operand) rows lane % 16, chunk bit lane / 16; K (B operand,
  // non-transposed) rows lane % 8 + 8 * (lane / 16), chunk bit (lane / 8) % 2; V (B operand,
  // transposed) rows lane % 16, chunk bit lane / 16.
  const LaneSwizzle<D> q_lane(lane & 15, lane >> 4, lane);
  const LaneSwizzle<D> k_lane((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1, lane);
  const LaneSwizzle<D> v_lane(lane & 15, lane >> 4, lane);

  // This lane's rows (within the CTA's sequence) for C fragments c[0..1] and c[2..3].
  const int row_lo = m0 + warp * 16 + g, row_hi = row_lo + 8;
  const float scale_log2 = p.scale * kLog2e;  // exp(x * scale) == exp2(x * scale * log2(e))
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.0f, 0.0f};  // this lane's partial sums; reduced over the quad at the end

  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    const int n0 = it * BN;
    if (it + 1 < n_tiles) {
      load_tile<T, BN, D, NT>(sK + (buf ^ 1) * BN * D, k, p.k_strides[2], n0 + BN, Lk, tid);
      load_tile<T, BN, D, NT>(sV + (buf ^ 1) * BN * D, v, p.v_strides[2], n0 + BN, Lk, tid);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* tK = sK + buf * BN * D;
    const T* tV = sV + buf * BN * D;

    // S = Q K^T for this warp's 16 rows.
    float s[BN / 8][4];
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[4];
      ldmatrix_x4(a, sQ + q_lane.at(ks, warp * 16));
#pragma unroll
      for (int j = 0; j < BN / 8; j += 2) {
        // Matrices (keys j*8.., k), (j*8.., k+8), (j*8+8.., k), (j*8+8.., k+8) for k = 16 ks.
        uint32_t kb[4];
        ldmatrix_x4(kb, tK + k_lane.at(ks, j * 8));
        const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
        mma_m16n8k16<T>(s[j], a, b0);
        mma_m16n8k16<T>(s[j + 1], a, b1);
      }
    }

    // Mask keys past the end and, causally, right of the diagonal (only on tiles that need it).
    const bool need_mask = n0 + BN > Lk || (Causal && n0 + BN - 1 > m0 + off);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + j * 8 + 2 * t4 + (e & 1);
          const int row = e < 2 ? row_lo : row_hi;
          if (col >= Lk || (Causal && col > row + off)) s[j][e] = -INFINITY;
        }
    }

    // Online softmax: new row maxima (the quad's 4 lanes share a row), rescale, exponentiate.
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with no visible key so far keeps max -inf; subtract 0 instead so exp2 gives 0, not NaN.
      const float mx_scaled = mx == -INFINITY ? 0.0f : mx * scale_log2;
      corr[r] = exp2f(row_max[r] * scale_log2 - mx_scaled);
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] * scale_log2 - mx_scaled);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] * scale_log2 - mx_scaled);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * corr[r] + sum;
    }
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= corr[0];
      o[j][1] *= corr[0];
      o[j][2] *= corr[1];
      o[j][3] *= corr[1];
    }

    // O += P V: the C fragments of S for keys kk..kk+15 are the A fragment of this k-step.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        // V is (key, dim) in shared memory; .trans yields the column-major B fragments.
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, tV + v_lane.at(j / 2, kk * 16));
        const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
        mma_m16n8k16<T>(o[j], a, b0);
        mma_m16n8k16<T>(o[j + 1], a, b1);
      }
    }
    __syncthreads();  // every warp is done with buffer `buf` before it is refilled
  }
  cp_async_wait<0>();

  // Finish: full row sums over the quad, normalise, store out and lse.
  T* out = static_cast<T*>(p.out) + b * p.o_strides[0] + h * p.o_strides[1];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = r == 0 ? row_lo : row_hi;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;  // no visible key: output 0
    if (row < Lq) {
      T* orow = out + static_cast<int64_t>(row) * p.o_strides[2];
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(orow + j * 8 + 2 * t4) = pack2<T>(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
      if (t4 == 0)
        p.lse[bh * p.seqlen_q + row] = l > 0.0f ? row_max[r] * p.scale + logf(l) : INFINITY;
    }
  }
}

template <typename T, int D, bool Causal>
void run_flash_fwd(const AttnFwdParams& p, void* stream) {
  using Tr = AttnFwdTraits<D>;
  auto kernel = flash_fwd_kernel<T, D, Causal>;
  set_max_dynamic_smem(kernel, Tr::kSmemBytes);
  const dim3 grid(ceil_div(p.seqlen_q, Tr::kBlockM), static_cast<unsigned>(p.batch * p.heads));
  launch(kernel, grid, dim3(Tr::kThreads), Tr::kSmemBytes, static_cast<cudaStream_t>(stream), p);
}

}  // namespace fastattn::cuda::attn

// One explicit instantiation per generated .cu file (generate_instantiations.py).
#define FA_ATTN_FWD_INSTANTIATE(T, D, CAUSAL) \
  template void fastattn::cuda::attn::run_flash_fwd<T, D, CAUSAL>(const fastattn::cuda::AttnFwdParams&, void*);
#define FA_ATTN_FWD_EXTERN(T, D, CAUSAL) \
  extern template void fastattn::cuda::attn::run_flash_fwd<T, D, CAUSAL>(const fastattn::cuda::AttnFwdParams&, void*);
