// The execution model of the host SIMT runtime (DESIGN.md section 6).
//
// A launch runs the grid block by block. Each block is executed by one OS thread per
// CUDA thread; the same OS threads are reused for every block of a launch. Each thread
// keeps its coordinates in a thread_local context, which the threadIdx/blockIdx/...
// macros read. __syncthreads() is a std::barrier shared by the block; warp collectives
// meet at a per-warp std::barrier and exchange values through a per-warp slot array.
// Threads that return from the kernel leave both barriers (arrive_and_drop), so the
// remaining threads of the block keep synchronising, as on the GPU.
//
// Static __shared__ variables are function-local statics: one object per kernel
// instantiation, used by one block at a time (blocks run one after another, launches are
// serialised by a mutex). All threads of a block therefore see the same memory, and a
// missing __syncthreads() is a real data race that ThreadSanitizer reports.
#pragma once

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

#include "fastattn_sim/types.h"

namespace fastattn::sim {

constexpr int kWarpSize = 32;

struct WarpState {
  std::optional<std::barrier<>> bar;   // the lanes of this warp still running
  std::atomic<unsigned> live_mask{0};  // lanes that exist and have not returned
  // Each lane's contribution to a collective, tagged with (block, collective number) so
  // that readers know which lanes took part. Double-buffered: consecutive collectives use
  // alternate halves, so one barrier per collective suffices (a lane can only write the
  // half a slower lane is reading after everyone passed the next barrier, i.e. after
  // every read of that half has finished).
  struct Slot {
    std::uint64_t value;
    std::uint64_t tag;
  };
  Slot slots[2][kWarpSize];
};

struct BlockState {
  std::optional<std::barrier<>> bar;   // __syncthreads()
  WarpState* warps = nullptr;
  unsigned char* dynamic_smem = nullptr;
  std::size_t dynamic_smem_bytes = 0;
};

struct ThreadContext {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  unsigned lane = 0;
  unsigned collective = 0;     // warp collectives this thread took part in, in this block
  std::uint64_t block_serial = 0;  // 1 + linear index of the block being run
  BlockState* block = nullptr;
  WarpState* warp = nullptr;
};

inline thread_local ThreadContext g_ctx;

// Runs `body` (the kernel call with its arguments bound) for every thread of every block
// of the grid. `dynamic_smem_bytes` sizes the per-block arena behind dynamic_shared_memory().
// Aborts with a message on an invalid configuration (as a launch error would).
void launch(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, const std::function<void()>& body);

// The current block's dynamic shared memory (16-byte aligned, poisoned with 0xff bytes at
// the start of every block so that reads before writes show up as NaN).
inline unsigned char* dynamic_shared_memory() { return g_ctx.block->dynamic_smem; }

inline void sync_block() { g_ctx.block->bar->arrive_and_wait(); }
inline void sync_warp() { g_ctx.warp->bar->arrive_and_wait(); }

[[noreturn]] void fail(const char* what);

}  // namespace fastattn::sim
