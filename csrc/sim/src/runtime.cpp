// The launcher of the host SIMT runtime (see include/fastattn_sim/runtime.h).
#include "fastattn_sim/runtime.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace fastattn::sim {

namespace {
// Static __shared__ variables are per kernel, not per block: launches must not overlap.
std::mutex g_launch_mutex;
}  // namespace

void fail(const char* what) {
  std::fprintf(stderr, "fastattn sim: %s\n", what);
  std::fflush(stderr);
  std::abort();
}

void launch(dim3 grid, dim3 block, std::size_t dynamic_smem_bytes, const std::function<void()>& body) {
  const unsigned long long nthreads = 1ull * block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || block.z > 64) fail("invalid block size (1..1024 threads, z <= 64)");
  if (grid.y > 65535 || grid.z > 65535) fail("invalid grid size (y, z <= 65535)");
  const unsigned long long nblocks = 1ull * grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  if (dynamic_smem_bytes > 227 * 1024) fail("dynamic shared memory over 227 KB");

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const unsigned n = static_cast<unsigned>(nthreads);
  const unsigned nwarps = (n + kWarpSize - 1) / kWarpSize;
  // Value-initialised: slot tags start at 0, which no collective uses (block_serial >= 1).
  std::unique_ptr<WarpState[]> warps(new WarpState[nwarps]());
  // 16-byte aligned arena for the block's dynamic shared memory.
  std::vector<std::uint64_t> arena((dynamic_smem_bytes + 15) / 16 * 2 + 2);
  BlockState state;
  state.warps = warps.get();
  state.dynamic_smem = reinterpret_cast<unsigned char*>(arena.data());
  state.dynamic_smem_bytes = dynamic_smem_bytes;

  unsigned long long current = 0;  // linear index of the block being run
  auto reset_block = [&]() noexcept {
    state.bar.emplace(static_cast<std::ptrdiff_t>(n));
    for (unsigned w = 0; w < nwarps; ++w) {
      const unsigned lanes = (w + 1 == nwarps) ? n - w * kWarpSize : kWarpSize;
      warps[w].bar.emplace(static_cast<std::ptrdiff_t>(lanes));
      warps[w].live_mask.store(lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u), std::memory_order_relaxed);
    }
    if (dynamic_smem_bytes) std::memset(state.dynamic_smem, 0xff, dynamic_smem_bytes);
  };
  reset_block();
  // The completion step runs once all threads finished a block, before any starts the next.
  std::barrier grid_bar(static_cast<std::ptrdiff_t>(n), [&]() noexcept {
    ++current;
    if (current < nblocks) reset_block();
  });

  auto worker = [&](unsigned tid) {
    ThreadContext& c = g_ctx;
    c.thread_idx = {tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    c.block_dim = block;
    c.grid_dim = grid;
    c.lane = tid % kWarpSize;
    c.block = &state;
    c.warp = &warps[tid / kWarpSize];
    for (;;) {
      const unsigned long long b = current;
      if (b >= nblocks) break;
      c.block_idx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                     static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
      c.collective = 0;
      c.block_serial = b + 1;
      body();
      // The thread returned from the kernel: it no longer takes part in this block's barriers.
      c.warp->live_mask.fetch_and(~(1u << c.lane), std::memory_order_relaxed);
      c.warp->bar->arrive_and_drop();
      state.bar->arrive_and_drop();
      grid_bar.arrive_and_wait();
    }
    c = ThreadContext{};
  };

  std::vector<std::thread> threads;
  threads.reserve(n - 1);
  for (unsigned t = 1; t < n; ++t) threads.emplace_back(worker, t);
  worker(0);
  for (auto& t : threads) t.join();
}

}  // namespace fastattn::sim
