// Tile traits of the attention backward (flash_bwd.cuh, flash_bwd_dq.cuh), per kernel head dim
// and, at head dim 256, per shared-memory size (run_flash_bwd picks the tile the device holds).
//
// dK/dV kernel (AttnBwdTraits<D, BN>): a CTA owns kBlockN keys of one (batch, key/value head),
// 16 per key group of warps, and walks the query blocks (kBlockM rows) of every query head of
// its group. Per warp and step it computes S^T = K Q^T and dP^T = V dO^T (16 keys x kSubM
// queries: the score tile is transposed so that the warp's rows are its keys, and dV += P^T dO,
// dK += dS^T Q take P^T and dS^T straight from registers as mma A fragments). dS^T also goes to
// shared memory, where dQ += dS K reads it with each warp on 16 query rows and a column slice.
// Registers per thread at D = 128: dK and dV accumulators 64 + 64 floats, S^T and dP^T 32 + 32.
// At D = 256 the dK/dV columns are split across kColSplit = 2 warps of a key group (8 warps for
// 64 keys, 4 for 32): each recomputes the same full-D S^T and dP^T for its 16 keys and owns dK
// and dV for its 128 columns, the register budget of D = 128 (the S^T/dP^T MMAs are done twice,
// about 1.4 times the MMA work of an unsplit tile, instead of spilling 256 accumulators).
// Shared memory: K, V [BN][D]; Q [2][BM][D] (double-buffered: it is read at both ends of a
// step); dO [BM][D] (refilled once the step is past dV and dP); dS^T [BN][64] (rows of at
// least 64 elements, the swizzle's 8 chunks; BM = 32 uses half of each); lse and delta
// [2][2][BM] floats:
//   D =  64: 50 KB.    D = 128: 89 KB (below sm_86/sm_89's 99 KB).
//   D = 256, BN = 64, BM = 32: 121 KB (sm_80, sm_90).    BN = 32, BM = 32: 85 KB (sm_86, sm_89).
//
// Deterministic dQ kernel (AttnBwdDqTraits<D, BN>): a CTA owns kBlockM = 64 query rows (16 per
// warp, 4 warps) and walks the key blocks (kBlockN keys, K and V double-buffered). Shared
// memory: Q, dO [64][D], K, V [2][BN][D]:
//   D =  64: 48 KB.    D = 128: 96 KB.    D = 256: BN = 32 128 KB (sm_80, sm_90), BN = 16 96 KB.
#pragma once

namespace fastattn::cuda {

template <int HeadDim, int BlockN = 64>
struct AttnBwdTraits {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256, "backward head dims 64, 128, 256");
  static_assert(BlockN == 64 || (HeadDim == 256 && BlockN == 32), "64 keys a CTA (32 at head dim 256)");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockN = BlockN;                  // keys per CTA
  static constexpr int kBlockM = HeadDim <= 128 ? 64 : 32;  // query rows per step
  static constexpr int kColSplit = HeadDim <= 128 ? 1 : 2;  // warps sharing a key group's dK/dV columns
  static constexpr int kCols = HeadDim / kColSplit;        // dK/dV columns per warp
  static constexpr int kWarps = kBlockN / 16 * kColSplit;
  static constexpr int kThreads = kWarps * 32;
  // Query columns of S^T per pass (two passes a query block at D = 128: 32 fewer live
  // registers, the K/V A fragments read twice).
  static constexpr int kSubM = HeadDim <= 64 ? 64 : 32;
  // dQ += dS K: warps on kBlockM / 16 row groups times kDqSlices column slices.
  static constexpr int kDqSlices = kWarps / (kBlockM / 16);
  static constexpr int kDqCols = HeadDim / kDqSlices;
  static constexpr int kDsCols = kBlockM < 64 ? 64 : kBlockM;  // dS^T's row length in shared memory
  static_assert(kCols % 64 == 0 && kDqCols % 64 == 0, "column slices start on a swizzle period");
  static constexpr int kDkdvSmemBytes =
      ((2 * kBlockN + 3 * kBlockM) * HeadDim + kBlockN * kDsCols) * 2 + 4 * kBlockM * 4;
};

template <int HeadDim, int BlockN = 64>
struct AttnBwdDqTraits {
  static_assert(BlockN == 64 || (HeadDim == 256 && (BlockN == 32 || BlockN == 16)), "dq key blocks");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockM = 64;      // query rows per CTA, 16 per warp
  static constexpr int kBlockN = BlockN;  // keys per step
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kSmemBytes = (2 * kBlockM + 4 * kBlockN) * HeadDim * 2;
};

// The preprocess and the dq conversion: one warp a row, 4 rows a block.
constexpr int kBwdRowsPerBlock = 4;
constexpr int kBwdRowThreads = kBwdRowsPerBlock * 32;

}  // namespace fastattn::cuda
