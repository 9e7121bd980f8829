// Tile traits of the attention forward, per head dim (FlashAttention-2's tiling).
//
// Every CTA has 4 warps. Each warp owns kMTiles m16 tiles of query rows (32 rows at head dims
// up to 128, as in FlashAttention-2: every K/V fragment loaded by ldmatrix then feeds two
// MMAs), so a CTA takes kBlockM = 64 * kMTiles query rows, and streams kBlockN keys per step.
// K and V have one shared-memory buffer each, pipelined against each other: V tile t is copied
// while S = Q K_t^T is computed, K tile t - 1 while the softmax and O += P V_t run.
//
// Shared memory = (kBlockM + 2 * kBlockN) * D * 2 bytes (Q, K, V); the output tile is staged
// through Q's buffer at the end:
//   D =  64: 128 x 64 -> 32 KB.
//   D = 128: 128 x 32 -> 48 KB.
//   D = 256:  64 x 32 -> 64 KB.
// Registers per thread: the O accumulator is kMTiles * D / 2 floats, the score tile
// kMTiles * kBlockN / 2, Q's fragments (when held) kMTiles * D / 4 words.
//   D = 64: 64 + 64 + 32: Q is loaded into registers once (kQInRegs).
//   D = 128: 128 + 32; Q (another 64) stays in shared memory and is re-read each step, as
//            FlashAttention-2 does. kBlockN = 64 (FlashAttention-2's tile) takes all 255
//            registers and spills 16 bytes in the causal instantiations (nvcc 13.0, sm_80), so
//            the step is 32 keys: about 245 registers and no spills.
//   D = 256: a warp takes 16 rows (O alone is 128 floats) and Q is re-read.
#pragma once

namespace fastattn::cuda {

template <int HeadDim>
struct AttnFwdTraits {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256, "head dims 64, 128, 256");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMTiles = HeadDim <= 128 ? 2 : 1;  // m16 tiles (16 query rows each) per warp
  static constexpr int kBlockM = kWarps * 16 * kMTiles;
  static constexpr int kBlockN = HeadDim == 64 ? 64 : 32;
  static constexpr bool kQInRegs = HeadDim <= 64;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks of 8 elements
  static constexpr int kSmemElems = (kBlockM + 2 * kBlockN) * HeadDim;
  static constexpr int kSmemBytes = kSmemElems * 2;
};

}  // namespace fastattn::cuda
