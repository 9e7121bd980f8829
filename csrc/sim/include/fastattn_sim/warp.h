// Warp collectives of the host SIMT runtime: shuffles and votes.
//
// Every lane writes its operand into the warp's slot array, the warp meets at its barrier,
// and every lane reads the slot it needs. Slots are double-buffered and tagged (see
// WarpState), so one barrier per collective is enough. The source-lane arithmetic is the PTX ISA's
// definition of shfl.sync (segmask/clamp from `width`), so edge lanes behave as on the GPU:
// a lane whose source falls outside its segment (or is not a live lane in `mask`) gets
// its own value back. The sim requires the live lanes of a warp to be converged at a
// collective (every one of them calls it), which is what the project's kernels do.
#pragma once

#include <cstring>
#include <type_traits>

#include "fastattn_sim/runtime.h"

namespace fastattn::sim {

enum class ShflMode { kIdx, kUp, kDown, kBfly };

// The lane whose value lane `lane` reads, or `lane` itself when PTX says "own value".
inline unsigned shfl_source(ShflMode mode, unsigned lane, int b, int width) {
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) fail("shfl: width must be a power of 2 <= 32");
  const int segmask = (kWarpSize - width) & 0x1f;
  const int clamp = mode == ShflMode::kUp ? 0 : 0x1f;
  const int l = static_cast<int>(lane);
  const int max_lane = (l & segmask) | (clamp & ~segmask);
  const int min_lane = l & segmask;
  int j = l;
  bool valid = false;
  switch (mode) {
    case ShflMode::kUp: j = l - (b & 0x1f); valid = j >= max_lane; break;
    case ShflMode::kDown: j = l + (b & 0x1f); valid = j <= max_lane; break;
    case ShflMode::kBfly: j = l ^ (b & 0x1f); valid = j <= max_lane; break;
    case ShflMode::kIdx: j = min_lane | (b & 0x1f & ~segmask); valid = j <= max_lane; break;
  }
  return valid ? static_cast<unsigned>(j) : lane;
}

// Publishes this lane's operand for the current collective and waits for the warp.
// Returns the slots of this collective and the mask of lanes that took part in it.
inline unsigned exchange(std::uint64_t raw, WarpState::Slot*& slots) {
  ThreadContext& c = g_ctx;
  WarpState& w = *c.warp;
  ++c.collective;
  const std::uint64_t tag = (c.block_serial << 32) | c.collective;
  slots = w.slots[c.collective & 1u];
  slots[c.lane] = {raw, tag};
  w.bar->arrive_and_wait();
  unsigned participants = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if (slots[l].tag == tag) participants |= 1u << l;
  return participants;
}

template <typename T>
T shfl(ShflMode mode, unsigned mask, T var, int b, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shfl operands are at most 8 bytes");
  std::uint64_t raw = 0;
  std::memcpy(&raw, &var, sizeof(T));
  WarpState::Slot* slots = nullptr;
  const unsigned participants = exchange(raw, slots) & mask;
  const unsigned lane = g_ctx.lane;
  unsigned src = shfl_source(mode, lane, b, width);
  if (!((participants >> src) & 1u)) src = lane;  // undefined on the GPU; the own value here
  T out;
  std::memcpy(&out, &slots[src].value, sizeof(T));
  return out;
}

// OR of (pred << lane) over the lanes in `mask` that take part; `*participants` gets those lanes.
inline unsigned ballot(unsigned mask, bool pred, unsigned* participants = nullptr) {
  WarpState::Slot* slots = nullptr;
  const unsigned who = exchange(pred ? 1u : 0u, slots) & mask;
  unsigned out = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if (((who >> l) & 1u) && slots[l].value) out |= 1u << l;
  if (participants) *participants = who;
  return out;
}

}  // namespace fastattn::sim

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kIdx, mask, var, src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kUp, mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kDown, mask, var, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kBfly, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return fastattn::sim::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return fastattn::sim::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  unsigned participants = 0;
  const unsigned votes = fastattn::sim::ballot(mask, pred != 0, &participants);
  return votes == participants;
}
inline unsigned __activemask() { return fastattn::sim::g_ctx.warp->live_mask.load(std::memory_order_relaxed); }
// A collective without data, so that every lane's collective count stays in step.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  fastattn::sim::WarpState::Slot* slots = nullptr;
  (void)fastattn::sim::exchange(0, slots);
  (void)mask;
}
