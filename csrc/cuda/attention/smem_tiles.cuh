// Shared-memory tile helpers of the tensor-core attention kernels (forward and backward):
// the XOR swizzle of 16-byte chunks, per-lane ldmatrix addresses and the cp.async tile copy.
// flash_fwd.cuh's header comment explains the swizzle.
#pragma once

#include <cstdint>

#include "../common/cp_async.cuh"
#include "../common/platform.cuh"

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

// One thread's share of copying a Rows x D tile of a (seq, D) matrix with row stride `stride`
// into a swizzled shared-memory tile with cp.async, 16 bytes a copy. Thread `tid` always
// copies chunk column tid % (D / 8) of rows tid / (D / 8) + i * kRowStep, so its shared-memory
// offsets are compile-time steps from kPhases precomputed ones (kRowStep is a multiple of 8
// or of 4, so the row's XOR term repeats with period kPhases) and its global addresses one
// 64-bit add apart. The stride is an argument rather than a member: read from the kernel's
// parameters at each use, it costs no register across the main loop.
template <typename T, int Rows, int D, int Threads>
struct TileCopy {
  static constexpr int kChunksPerRow = D / 8;
  static_assert(Threads % kChunksPerRow == 0, "a thread keeps its chunk column");
  static constexpr int kRowStep = Threads / kChunksPerRow;
  static_assert(Rows % kRowStep == 0, "the tile's chunks divide among the threads");
  static constexpr int kPasses = Rows / kRowStep;
  static constexpr int kPhases = kRowStep % 8 == 0 ? 1 : (kRowStep % 4 == 0 ? 2 : 8);
  static_assert(kPasses % kPhases == 0 || kPasses < kPhases, "whole swizzle periods");

  uint32_t row;       // this thread's first row in the tile
  uint32_t col;       // its column (a multiple of 8)
  bool col_ok;        // the column exists: head dims below D are zero-filled up to D
  int smem[kPhases];  // shared-memory offsets of its first kPhases chunks

  __device__ __forceinline__ TileCopy(int tid, int cols) {
    row = static_cast<uint32_t>(tid / kChunksPerRow);
    col = static_cast<uint32_t>((tid % kChunksPerRow) * 8);
    col_ok = static_cast<int>(col) < cols;
#pragma unroll
    for (int i = 0; i < kPhases; ++i) smem[i] = swz<D>(static_cast<int>(row) + i * kRowStep, static_cast<int>(col));
  }

  __device__ __forceinline__ T* dst(T* tile, int i) const {
    return tile + smem[i % kPhases] + (i / kPhases) * kPhases * kRowStep * D;
  }

  // Rows row0 + r of the matrix into tile rows r; those at or past `rows_valid` (counted from
  // row0), and the columns at or past the head dim, are zero-filled and their source is never
  // read. Unsigned row and column: known non-negative, so no sign extension is kept alive.
  __device__ __forceinline__ void copy_checked(T* tile, const T* src, int64_t stride, int row0,
                                               int rows_valid) const {
    const T* from = src + (static_cast<int64_t>(row0) + row) * stride + col;
    // Compared with compile-time offsets below; 0 (nothing valid) for a column past the head dim.
    const int rows_left = col_ok ? rows_valid - static_cast<int>(row) : 0;
#pragma unroll
    for (int i = 0; i < kPasses; ++i, from += kRowStep * stride) {
      // A zero-fill copy (source size 0) reads nothing at `from`, which may lie past the tensor.
      cp_async_zfill<16>(dst(tile, i), from, i * kRowStep < rows_left);
    }
  }

  // Every row copied when `valid`, every row zero-filled (and nothing read) when not; columns
  // past the head dim zero-filled.
  __device__ __forceinline__ void copy_all(T* tile, const T* src, int64_t stride, int row0, bool valid) const {
    const T* from = src + (static_cast<int64_t>(row0) + row) * stride + col;
    valid = valid && col_ok;
#pragma unroll
    for (int i = 0; i < kPasses; ++i, from += kRowStep * stride) cp_async_zfill<16>(dst(tile, i), from, valid);
  }
};

}  // namespace fastattn::cuda::attn
