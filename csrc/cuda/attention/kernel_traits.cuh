// Tile traits of the attention forward, per head dim. Every CTA has 4 warps; each warp owns
// 16 query rows (one m16 mma tile), so a CTA takes kBlockM = 64 query rows, and streams
// kBlockN keys per step through a double-buffered K/V ring in shared memory.
//
// Shared memory = (kBlockM + 4 * kBlockN) * D * 2 bytes (Q once, K and V twice each):
//   D =  64: kBlockN = 64 -> 40 KB: several CTAs per SM on every target.
//   D = 128: kBlockN = 64 -> 80 KB: fits sm_86/sm_89's 99 KB per block (two CTAs on sm_80/90).
//   D = 256: kBlockN = 16 -> 64 KB (kBlockN = 64 would need 160 KB, over sm_86/sm_89's
//            99 KB; see below for why not 32).
// Registers per thread: the O accumulator is 16 x D fp32 per warp = D / 2 floats per lane
// (128 at D = 256) plus the score tile 16 x kBlockN = kBlockN / 8 floats. At D = 256,
// kBlockN = 32 compiled to 255 registers with spills (nvcc 13, sm_80, non-causal);
// kBlockN = 16 takes 208-212 and none. Q fragments are re-read from shared memory with
// ldmatrix every step rather than held in registers, for the same reason.
#pragma once

namespace fastattn::cuda {

template <int HeadDim>
struct AttnFwdTraits {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256, "head dims 64, 128, 256");
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * 16;
  static constexpr int kBlockN = HeadDim == 256 ? 16 : 64;
  static constexpr int kChunksPerRow = HeadDim / 8;  // 16-byte chunks of 8 elements
  static constexpr int kSmemElems = (kBlockM + 4 * kBlockN) * HeadDim;
  static constexpr int kSmemBytes = kSmemElems * 2;
};

}  // namespace fastattn::cuda
