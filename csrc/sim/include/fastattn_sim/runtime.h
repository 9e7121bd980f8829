// The execution model of the host SIMT runtime.
//
// Threads and blocks. A launch runs the grid on `Options::concurrent_blocks` block slots at
// once (2 by default), each slot with one OS thread per CUDA thread; a slot's threads take
// the next unstarted block when they finish one, so at least two blocks are in flight
// whenever the grid has two, and ThreadSanitizer sees races between blocks on global memory.
// Each thread keeps its coordinates in a thread_local context, which the threadIdx/blockIdx/...
// macros read. __syncthreads() is a std::barrier shared by the block; warp collectives
// meet at a per-warp std::barrier and exchange values through a per-warp slot array.
// Threads that return from the kernel leave both barriers (arrive_and_drop), so the
// remaining threads of the block keep synchronising, as on the GPU.
//
// Shared memory. Each slot owns one arena, static part first (48 KB, CUDA's static limit),
// then the launch's dynamic shared memory. A block's static __shared__ variables are placed
// in the static part when their declaration first runs in that block (the sim build compiles
// every .cu through a copy in which each `__shared__ T name[N];` becomes a call to
// static_shared(), see csrc/sim/sim_sources.py), so they are per block, like dynamic shared
// memory. The whole arena holds 0xff bytes (a NaN in fp32, fp16 and bf16) at the start of
// every block: a read before a write shows up as NaN, never as the previous block's data.
//
// What the hardware makes visible is modelled where kernels can get it wrong:
//   - cp.async (cp_async_issue/commit/wait): a copy's destination holds poison until the
//     copy lands; it lands when a cp_async_wait covers its group (or, with
//     Options::early_copies, at a random earlier point), and other threads may read it only
//     after a barrier that follows that wait. A shadow record per 4-byte word of the arena
//     tracks this, so a read through ldmatrix of a copy that no wait covered, or that was
//     waited for without a barrier since, aborts, as does a cp.async into memory that another
//     warp read, or another thread's copy wrote, since the last barrier.
//   - Warp collectives check their masks (warp.h); ldmatrix rows and cp.async destinations
//     must be aligned shared memory of the running block, cp.async sources must not be
//     shared memory, vector accesses must be aligned to their width.
// Every such failure aborts with the kernel's name, the block, warp and lane (fail_here).
#pragma once

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "fastattn_sim/types.h"

namespace fastattn::sim {

constexpr int kWarpSize = 32;
constexpr std::size_t kStaticSmemBytes = 48 * 1024;  // CUDA's limit on static __shared__ per block
constexpr std::size_t kMaxSmemBytes = 227 * 1024;    // the largest per-block shared memory (sm_90)
constexpr int kMaxStaticSharedVars = 64;             // distinct static __shared__ variables per block

// Run-time settings. Defaults come from the environment when the first launch reads them:
//   FASTATTN_SIM_BLOCKS=<n>        blocks in flight at once (default 2; 1 runs them one by one)
//   FASTATTN_SIM_EARLY_COPIES=0|1  land cp.async copies at random points before their wait
//                                  (default 1), so code relying on a copy *not* having landed fails
//   FASTATTN_SIM_SEED=<n>          seed of those random points (runs are reproducible)
struct Options {
  unsigned concurrent_blocks = 2;
  bool early_copies = true;
  std::uint64_t seed = 0;
};
Options options();
void set_options(const Options& o);

struct WarpState {
  std::optional<std::barrier<>> bar;   // the lanes of this warp still running
  std::atomic<unsigned> live_mask{0};  // lanes that exist and have not returned
  // Each lane's contribution to a collective, tagged with (block, collective number) so
  // that readers know which lanes took part, with the mask the lane passed. Double-buffered:
  // consecutive collectives use alternate halves, so one barrier per collective suffices (a
  // lane can only write the half a slower lane is reading after everyone passed the next
  // barrier, i.e. after every read of that half has finished).
  struct Slot {
    std::uint64_t value;
    std::uint64_t tag;
    unsigned mask;
  };
  Slot slots[2][kWarpSize];
};

// One cp.async in flight: the source is read when the copy is issued (so a bad source is
// reported at the kernel's cp_async call), the destination written when it lands.
struct AsyncCopy {
  unsigned char* dst;
  unsigned bytes;
  bool landed;
  unsigned char data[16];
};

// A thread's cp.async groups: committed ones oldest first, then the open (uncommitted) one.
struct AsyncState {
  std::vector<std::vector<AsyncCopy>> committed;
  std::vector<AsyncCopy> open;
  std::size_t unlanded = 0;
};

struct LaunchState {
  const void* kernel = nullptr;  // for messages: resolved to its name only when one is printed
  dim3 grid, block;
  std::size_t dynamic_smem_bytes = 0;
  bool early_copies = false;
  // Every slot's arena, so that cp.async can tell shared from global sources.
  std::vector<std::pair<const unsigned char*, const unsigned char*>> arenas;
};

struct BlockState {
  std::optional<std::barrier<>> bar;  // __syncthreads()
  WarpState* warps = nullptr;
  const LaunchState* launch = nullptr;
  uint3 block_idx{0, 0, 0};
  unsigned char* smem = nullptr;  // the arena: kStaticSmemBytes of static, then dynamic
  std::size_t smem_bytes = 0;
  unsigned char* dynamic_smem = nullptr;
  std::size_t dynamic_smem_bytes = 0;
  // Static __shared__ placement for the running block: first come, first placed. Only
  // relaxed atomics, so that placing a variable creates no happens-before edge between
  // threads, which would hide a missing barrier from ThreadSanitizer.
  static constexpr std::uint32_t kUnplaced = 0xffffffffu;
  struct StaticVar {
    std::atomic<const void*> key{nullptr};
    std::atomic<std::uint32_t> offset{kUnplaced};
  };
  StaticVar static_vars[kMaxStaticSharedVars];
  std::atomic<std::uint32_t> static_used{0};
  // Shadow records, one per 4-byte word of the arena (see memory.cpp); `shadow_used` says
  // whether the block touched them, so that only such blocks pay for clearing them.
  std::atomic<std::uint64_t>* shadow_write = nullptr;
  std::atomic<std::uint64_t>* shadow_read = nullptr;
  std::atomic<bool> shadow_used{false};
};

struct ThreadContext {
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
  unsigned tid = 0;            // linear thread index in the block
  unsigned lane = 0;
  unsigned collective = 0;     // warp collectives this thread took part in, in this block
  std::uint32_t barriers = 0;    // __syncthreads() this thread passed, in this block
  std::uint32_t warp_syncs = 0;  // __syncwarp() this thread passed, in this block
  std::uint64_t block_serial = 0;  // 1 + linear index of the block being run
  std::uint64_t rng = 0;           // state of the early-landing choices
  BlockState* block = nullptr;
  WarpState* warp = nullptr;
  AsyncState* async = nullptr;
};

inline thread_local ThreadContext g_ctx;

// Runs `body` (the kernel call with its arguments bound) for every thread of every block
// of the grid. `dynamic_smem_bytes` sizes the per-block dynamic part of the arena; `kernel`
// (the kernel function's address) names it in failure messages.
// Aborts with a message on an invalid configuration (as a launch error would).
void launch(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, const std::function<void()>& body,
            const void* kernel = nullptr);

// The current block's dynamic shared memory (16-byte aligned, poisoned at block start).
inline unsigned char* dynamic_shared_memory() { return g_ctx.block->dynamic_smem; }

// The running block's instance of the static __shared__ variable identified by `key`
// (the address of a function-local static of the declaring function, unique per
// instantiation), `bytes` long; placed and poisoned on the first call in each block.
void* static_shared(const void* key, std::size_t bytes, std::size_t align);

template <typename T>
T& static_shared_ref(const void* key, std::size_t align) {
  return *static_cast<T*>(static_shared(key, sizeof(T), align < alignof(T) ? alignof(T) : align));
}

// cp.async: issue one copy into this thread's open group, close the group, wait until at
// most `pending` committed groups are still in flight.
void cp_async_issue(void* smem_dst, const void* gmem_src, unsigned bytes, bool valid);
void cp_async_commit();
void cp_async_wait(int pending);

// Called by each lane that supplies an ldmatrix row address: checks alignment, that the
// row lies in this block's shared memory, and that every cp.async that wrote it is visible.
void ldmatrix_row(const void* row, int matrix);

// A `bytes`-wide vector access must be aligned to its width.
void check_vector_access(const void* p, std::size_t bytes, const char* what);

// Lands a random pending copy of this thread now and then (Options::early_copies).
void land_early_slow();
inline void maybe_land_early() {
  if (g_ctx.async != nullptr && g_ctx.async->unlanded != 0) land_early_slow();
}

inline void sync_block() {
  maybe_land_early();
  g_ctx.block->bar->arrive_and_wait();
  ++g_ctx.barriers;
}

[[noreturn]] void fail(const char* what);
// Aborts naming the kernel, block, warp and lane of the calling thread, then the message.
[[noreturn]] void fail_here(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The demangled name of the function at `fn` ("kernel at 0x..." when it has no symbol).
const char* function_name(const void* fn);

}  // namespace fastattn::sim
