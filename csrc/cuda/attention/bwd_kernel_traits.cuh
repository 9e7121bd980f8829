// Tile traits of the attention backward (flash_bwd.cuh, flash_bwd_dq.cuh), per kernel head dim.
//
// dK/dV kernel: a CTA owns kBlockN = 64 keys of one (batch, key/value head), 16 per warp, and
// walks the query blocks (kBlockM = 64 rows) of every query head of its group. Per warp and
// step it computes S^T = K Q^T and dP^T = V dO^T (16 keys x 64 queries: the score tile is
// transposed so that the warp's rows are its keys, and dV += P^T dO, dK += dS^T Q take P^T and
// dS^T straight from registers as mma A fragments). dS^T also goes to shared memory, where
// dQ += dS K reads it with each warp on 16 query rows. Registers per thread at D = 128:
// dK and dV accumulators 64 + 64 floats, S^T and dP^T 32 + 32.
// Shared memory: K, V [64][D]; Q [2][64][D] (double-buffered: it is read at both ends of a
// step); dO [64][D] (refilled once the step is past dV and dP); dS^T [64][64]; lse and delta
// [2][2][64] floats:
//   D =  64: 50 KB.    D = 128: 89 KB (below sm_86/sm_89's 99 KB).
//
// Deterministic dQ kernel: a CTA owns kBlockM = 64 query rows (16 per warp) and walks the key
// blocks (kBlockN keys, K and V double-buffered). Shared memory: Q, dO [64][D], K, V [2][64][D]:
//   D =  64: 48 KB.    D = 128: 96 KB.
#pragma once

namespace fastattn::cuda {

template <int HeadDim>
struct AttnBwdTraits {
  static_assert(HeadDim == 64 || HeadDim == 128, "backward head dims 64, 128");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = 64;  // query rows per step (dK/dV) or per CTA (dQ)
  static constexpr int kBlockN = 64;  // keys per CTA (dK/dV) or per step (dQ)
  // dK/dV: query columns of S^T per pass (two passes a query block at D = 128: 32 fewer
  // live registers, the K/V A fragments read twice).
  static constexpr int kSubM = HeadDim <= 64 ? 64 : 32;
  static constexpr int kDkdvSmemBytes =
      ((2 * kBlockN + 3 * kBlockM) * HeadDim + kBlockN * kBlockM) * 2 + 4 * kBlockM * 4;
  static constexpr int kDqSmemBytes = (2 * kBlockM + 4 * kBlockN) * HeadDim * 2;
  // Rows per preprocess / conversion block (one warp a row).
  static constexpr int kRowsPerBlock = kWarps;
};

}  // namespace fastattn::cuda
