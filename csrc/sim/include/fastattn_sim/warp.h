// Warp collectives of the host SIMT runtime: shuffles and votes.
//
// Every lane writes its operand and its mask into the warp's slot array, the warp meets at
// its barrier, and every lane reads the slot it needs. Slots are double-buffered and tagged
// (see WarpState), so one barrier per collective is enough. The source-lane arithmetic is the
// PTX ISA's definition of shfl.sync (segmask/clamp from `width`), so edge lanes behave as on
// the GPU: a lane whose source falls outside its segment gets its own value back.
//
// Masks are checked as the CUDA programming guide states the rules, and a violation aborts
// naming the kernel, block, warp and lane: the calling lane must be in its mask, the lanes a
// mask names that take part must pass the same mask, and a shuffle must not read a lane that
// is outside the mask or has exited (either value is undefined on the GPU).
// The sim requires the live lanes of a warp to be converged at a collective (every one of
// them calls it), which is what the project's kernels do.
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

// Publishes this lane's operand (and mask) for the current collective and waits for the warp.
// Returns the slots of this collective and the mask of lanes that took part in it.
inline unsigned exchange(std::uint64_t raw, WarpState::Slot*& slots, unsigned mask = 0xffffffffu) {
  maybe_land_early();
  ThreadContext& c = g_ctx;
  WarpState& w = *c.warp;
  ++c.collective;
  const std::uint64_t tag = (c.block_serial << 32) | c.collective;
  slots = w.slots[c.collective & 1u];
  slots[c.lane] = {raw, tag, mask};
  w.bar->arrive_and_wait();
  unsigned participants = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if (slots[l].tag == tag) participants |= 1u << l;
  return participants;
}

// The rules every *_sync collective shares: the calling lane is in `mask`, and every lane
// `mask` names that took part passed the same mask (up to lanes that have exited, which a
// mask may name: a mask read from __activemask() just before a lane returns may or may not
// include it).
inline void check_mask(const char* op, unsigned mask, unsigned participants, const WarpState::Slot* slots) {
  const unsigned lane = g_ctx.lane;
  if (!((mask >> lane) & 1u))
    fail_here("%s with mask 0x%08x, which does not include the calling lane", op, mask);
  for (unsigned others = participants & mask; others != 0; others &= others - 1) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(others));
    if ((slots[l].mask & participants) != (mask & participants))
      fail_here("%s with mask 0x%08x, but lane %u, which that mask names, passes 0x%08x", op, mask, l, slots[l].mask);
  }
}

template <typename T>
T shfl(ShflMode mode, unsigned mask, T var, int b, int width, const char* op) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shfl operands are at most 8 bytes");
  std::uint64_t raw = 0;
  std::memcpy(&raw, &var, sizeof(T));
  WarpState::Slot* slots = nullptr;
  const unsigned participants = exchange(raw, slots, mask);
  check_mask(op, mask, participants, slots);
  const unsigned lane = g_ctx.lane;
  const unsigned src = shfl_source(mode, lane, b, width);
  if (src != lane) {
    if (!((mask >> src) & 1u)) fail_here("%s reads lane %u, which is not in mask 0x%08x", op, src, mask);
    if (!((participants >> src) & 1u))
      fail_here("%s reads lane %u, which has exited or does not exist (its value is undefined)", op, src);
  }
  T out;
  std::memcpy(&out, &slots[src].value, sizeof(T));
  return out;
}

// OR of (pred << lane) over the lanes in `mask` that take part; `*participants` gets those lanes.
inline unsigned ballot(unsigned mask, bool pred, const char* op, unsigned* participants = nullptr) {
  WarpState::Slot* slots = nullptr;
  const unsigned took_part = exchange(pred ? 1u : 0u, slots, mask);
  check_mask(op, mask, took_part, slots);
  const unsigned who = took_part & mask;
  unsigned out = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if (((who >> l) & 1u) && slots[l].value) out |= 1u << l;
  if (participants) *participants = who;
  return out;
}

}  // namespace fastattn::sim

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kIdx, mask, var, src_lane, width, "__shfl_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kUp, mask, var, static_cast<int>(delta), width, "__shfl_up_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kDown, mask, var, static_cast<int>(delta), width, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return fastattn::sim::shfl(fastattn::sim::ShflMode::kBfly, mask, var, lane_mask, width, "__shfl_xor_sync");
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return fastattn::sim::ballot(mask, pred != 0, "__ballot_sync"); }
inline int __any_sync(unsigned mask, int pred) { return fastattn::sim::ballot(mask, pred != 0, "__any_sync") != 0; }
inline int __all_sync(unsigned mask, int pred) {
  unsigned participants = 0;
  const unsigned votes = fastattn::sim::ballot(mask, pred != 0, "__all_sync", &participants);
  return votes == participants;
}
inline unsigned __activemask() { return fastattn::sim::g_ctx.warp->live_mask.load(std::memory_order_relaxed); }
// A collective without data, so that every lane's collective count stays in step. It orders
// memory among the lanes of the warp, which the cp.async visibility check counts.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  fastattn::sim::WarpState::Slot* slots = nullptr;
  const unsigned participants = fastattn::sim::exchange(0, slots, mask);
  fastattn::sim::check_mask("__syncwarp", mask, participants, slots);
  ++fastattn::sim::g_ctx.warp_syncs;
}
