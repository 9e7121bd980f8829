// The launcher of the host SIMT runtime (see include/fastattn_sim/runtime.h): block slots,
// their threads and arenas, run-time options, failure messages.
#include "fastattn_sim/runtime.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fastattn::sim {

namespace {

// Launches run one at a time, as kernels on one stream do.
std::mutex g_launch_mutex;

std::mutex g_options_mutex;
bool g_options_set = false;
Options g_options;

Options options_from_env() {
  Options o;
  if (const char* s = std::getenv("FASTATTN_SIM_BLOCKS")) {
    const long v = std::strtol(s, nullptr, 10);
    o.concurrent_blocks = v < 1 ? 1u : static_cast<unsigned>(v);
  }
  if (const char* s = std::getenv("FASTATTN_SIM_EARLY_COPIES")) o.early_copies = std::strcmp(s, "0") != 0;
  if (const char* s = std::getenv("FASTATTN_SIM_SEED")) o.seed = std::strtoull(s, nullptr, 10);
  return o;
}

// Total OS threads of one launch: slots beyond it are not started (two 1024-thread blocks fit).
constexpr unsigned kMaxLaunchThreads = 4096;

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Slot;

// Runs once all threads of a slot finished a block, before any starts the next.
struct BlockDone {
  Slot* slot;
  void operator()() noexcept;
};

struct Launcher {
  LaunchState launch;
  unsigned nthreads = 0, nwarps = 0;
  unsigned long long nblocks = 0;
  std::atomic<unsigned long long> next_block{0};
  std::uint64_t seed = 0;
  const std::function<void()>* body = nullptr;
};

struct Slot {
  Launcher* launcher = nullptr;
  std::unique_ptr<WarpState[]> warps;
  std::unique_ptr<std::uint64_t[]> arena;  // 8-byte elements: the arena is 16-byte aligned below
  std::unique_ptr<std::atomic<std::uint64_t>[]> shadow_write, shadow_read;
  std::size_t shadow_words = 0;
  std::unique_ptr<AsyncState[]> async;
  BlockState state;
  unsigned long long current = 0;  // linear index of the block this slot runs
  std::optional<std::barrier<BlockDone>> done;

  void start_block(unsigned long long b) noexcept {
    const Launcher& l = *launcher;
    const unsigned n = l.nthreads;
    state.bar.emplace(static_cast<std::ptrdiff_t>(n));
    for (unsigned w = 0; w < l.nwarps; ++w) {
      const unsigned lanes = (w + 1 == l.nwarps) ? n - w * kWarpSize : kWarpSize;
      warps[w].bar.emplace(static_cast<std::ptrdiff_t>(lanes));
      warps[w].live_mask.store(lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u), std::memory_order_relaxed);
    }
    const dim3 g = l.launch.grid;
    state.block_idx = {static_cast<unsigned>(b % g.x), static_cast<unsigned>((b / g.x) % g.y),
                       static_cast<unsigned>(b / (1ull * g.x * g.y))};
    current = b;
  }

  // Poisons what the finished block used and forgets its static variables and shadow records.
  void clear_block() noexcept {
    const std::uint32_t used = state.static_used.load(std::memory_order_relaxed);
    if (used) std::memset(state.smem, 0xff, used);
    if (state.dynamic_smem_bytes) std::memset(state.dynamic_smem, 0xff, state.dynamic_smem_bytes);
    for (auto& v : state.static_vars) {
      if (v.key.load(std::memory_order_relaxed) == nullptr) break;
      v.key.store(nullptr, std::memory_order_relaxed);
      v.offset.store(BlockState::kUnplaced, std::memory_order_relaxed);
    }
    state.static_used.store(0, std::memory_order_relaxed);
    if (state.shadow_used.load(std::memory_order_relaxed)) {
      for (std::size_t i = 0; i < shadow_words; ++i) {
        shadow_write[i].store(0, std::memory_order_relaxed);
        shadow_read[i].store(0, std::memory_order_relaxed);
      }
      state.shadow_used.store(false, std::memory_order_relaxed);
    }
  }
};

void BlockDone::operator()() noexcept {
  slot->clear_block();
  const unsigned long long b = slot->launcher->next_block.fetch_add(1, std::memory_order_relaxed);
  if (b < slot->launcher->nblocks) slot->start_block(b);
  else slot->current = b;
}

void worker(Slot& slot, unsigned tid) {
  const Launcher& l = *slot.launcher;
  ThreadContext& c = g_ctx;
  const dim3 block = l.launch.block;
  c.thread_idx = {tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
  c.block_dim = block;
  c.grid_dim = l.launch.grid;
  c.tid = tid;
  c.lane = tid % kWarpSize;
  c.block = &slot.state;
  c.warp = &slot.warps[tid / kWarpSize];
  AsyncState& async = slot.async[tid];
  c.async = &async;
  for (;;) {
    const unsigned long long b = slot.current;
    if (b >= l.nblocks) break;
    c.block_idx = slot.state.block_idx;
    c.collective = 0;
    c.barriers = 0;
    c.warp_syncs = 0;
    c.block_serial = b + 1;
    c.rng = splitmix64(l.seed ^ splitmix64(b * 1024 + tid));
    (*l.body)();
    // Copies never waited for die with the thread (their destination stays poisoned, and
    // its shadow record "pending", for any thread that reads it).
    async.committed.clear();
    async.open.clear();
    async.unlanded = 0;
    // The thread returned from the kernel: it no longer takes part in this block's barriers.
    c.warp->live_mask.fetch_and(~(1u << c.lane), std::memory_order_relaxed);
    c.warp->bar->arrive_and_drop();
    slot.state.bar->arrive_and_drop();
    slot.done->arrive_and_wait();
  }
  c = ThreadContext{};
}

}  // namespace

Options options() {
  std::lock_guard<std::mutex> lock(g_options_mutex);
  if (!g_options_set) {
    g_options = options_from_env();
    g_options_set = true;
  }
  return g_options;
}

void set_options(const Options& o) {
  std::lock_guard<std::mutex> lock(g_options_mutex);
  g_options = o;
  if (g_options.concurrent_blocks < 1) g_options.concurrent_blocks = 1;
  g_options_set = true;
}

void launch(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, const std::function<void()>& body,
            const void* kernel) {
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64) fail("invalid block size (1..1024 threads, z <= 64)");
  if (grid.y > 65535 || grid.z > 65535) fail("invalid grid size (y, z <= 65535)");
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  if (dynamic_smem_bytes > kMaxSmemBytes) fail("dynamic shared memory over 227 KB");
  const Options opt = options();

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Launcher l;
  l.launch.kernel = kernel;
  l.launch.grid = grid;
  l.launch.block = block;
  l.launch.dynamic_smem_bytes = dynamic_smem_bytes;
  l.launch.early_copies = opt.early_copies;
  l.nthreads = static_cast<unsigned>(nthreads);
  l.nwarps = (l.nthreads + kWarpSize - 1) / kWarpSize;
  l.nblocks = nblocks;
  l.seed = opt.seed;
  l.body = &body;

  unsigned nslots = opt.concurrent_blocks;
  if (nslots > kMaxLaunchThreads / l.nthreads) nslots = kMaxLaunchThreads / l.nthreads;
  if (nslots < 1) nslots = 1;
  if (nslots > nblocks) nslots = static_cast<unsigned>(nblocks);

  const std::size_t arena_bytes = kStaticSmemBytes + (dynamic_smem_bytes + 15) / 16 * 16;
  std::vector<std::unique_ptr<Slot>> slots;
  for (unsigned s = 0; s < nslots; ++s) {
    auto slot = std::make_unique<Slot>();
    slot->launcher = &l;
    // Value-initialised: slot tags start at 0, which no collective uses (block_serial >= 1).
    slot->warps.reset(new WarpState[l.nwarps]());
    slot->arena.reset(new std::uint64_t[arena_bytes / 8 + 2]);
    // new[] of uint64_t is 16-byte aligned on the platforms the sim runs on; checked anyway.
    unsigned char* base = reinterpret_cast<unsigned char*>(slot->arena.get());
    if (reinterpret_cast<std::uintptr_t>(base) % 16) base += 8;
    std::memset(base, 0xff, arena_bytes);
    slot->shadow_words = arena_bytes / 4;
    slot->shadow_write.reset(new std::atomic<std::uint64_t>[slot->shadow_words]());
    slot->shadow_read.reset(new std::atomic<std::uint64_t>[slot->shadow_words]());
    slot->async.reset(new AsyncState[l.nthreads]);
    BlockState& st = slot->state;
    st.warps = slot->warps.get();
    st.launch = &l.launch;
    st.smem = base;
    st.smem_bytes = arena_bytes;
    st.dynamic_smem = base + kStaticSmemBytes;
    st.dynamic_smem_bytes = dynamic_smem_bytes;
    st.shadow_write = slot->shadow_write.get();
    st.shadow_read = slot->shadow_read.get();
    slot->done.emplace(static_cast<std::ptrdiff_t>(l.nthreads), BlockDone{slot.get()});
    l.launch.arenas.emplace_back(base, base + arena_bytes);
    slot->start_block(l.next_block.fetch_add(1, std::memory_order_relaxed));
    slots.push_back(std::move(slot));
  }

  std::vector<std::thread> threads;
  threads.reserve(nslots * l.nthreads - 1);
  for (unsigned s = 0; s < nslots; ++s)
    for (unsigned t = (s == 0 ? 1u : 0u); t < l.nthreads; ++t) threads.emplace_back(worker, std::ref(*slots[s]), t);
  worker(*slots[0], 0);
  for (auto& t : threads) t.join();
}

void fail(const char* what) {
  std::fprintf(stderr, "fastattn sim: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

void fail_here(const char* fmt, ...) {
  // One message: other threads that fail at the same time wait here until the abort.
  static std::mutex one_at_a_time;
  one_at_a_time.lock();
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const ThreadContext& c = g_ctx;
  const char* kernel = c.block && c.block->launch ? function_name(c.block->launch->kernel) : "<no kernel>";
  std::fprintf(stderr, "fastattn sim: %s, block (%u,%u,%u), warp %u, lane %u (thread %u): %s\n", kernel,
               c.block_idx.x, c.block_idx.y, c.block_idx.z, c.tid / kWarpSize, c.lane, c.tid, msg);
  std::fflush(stderr);
  std::abort();
}

}  // namespace fastattn::sim
