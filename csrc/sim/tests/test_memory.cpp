// The simulator's model of what the hardware makes visible: cp.async
// copies that land only when waited for (or at random earlier points), per-block static
// shared memory poisoned at every block start, blocks running concurrently, and the uses of
// masks and __syncwarp that are legal and must not be reported. The kernels that break a
// rule, which must abort, are in tests/checks/sim_checks.cpp (tests/test_sim_checks.py).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "check.h"
#include "common/cp_async.cuh"
#include "common/ldmatrix.cuh"

namespace fc = fastattn::cuda;
namespace sim = fastattn::sim;
using fc::launch;

namespace {

// Sets the simulator's options for one test and restores them after.
struct ScopedOptions {
  sim::Options saved;
  explicit ScopedOptions(unsigned blocks, bool early, std::uint64_t seed = 1) : saved(sim::options()) {
    sim::Options o;
    o.concurrent_blocks = blocks;
    o.early_copies = early;
    o.seed = seed;
    sim::set_options(o);
  }
  ~ScopedOptions() { sim::set_options(saved); }
};

unsigned bits_of(const float* p) {
  unsigned u;
  std::memcpy(&u, p, 4);
  return u;
}

// Two groups of one 16-byte copy each; the thread reads its own destinations (visible to
// it without a barrier) before any wait, after wait_group 1 and after wait_group 0.
__global__ void cp_async_groups_kernel(const float* src, unsigned* seen) {
  FA_DYNAMIC_SHARED(float, smem);
  const int t = threadIdx.x;
  float* a = smem + t * 4;
  float* b = smem + 128 + t * 4;
  fc::cp_async<16>(a, src + t * 4);
  fc::cp_async_commit();
  fc::cp_async<16>(b, src + 128 + t * 4);
  fc::cp_async_commit();
  unsigned* o = seen + t * 6;
  o[0] = bits_of(a), o[1] = bits_of(b);
  fc::cp_async_wait<1>();
  o[2] = bits_of(a), o[3] = bits_of(b);
  fc::cp_async_wait<0>();
  o[4] = bits_of(a), o[5] = bits_of(b);
}

FA_TEST(cp_async_lands_when_waited) {
  ScopedOptions opt(2, false);
  std::vector<float> src(256);
  for (int i = 0; i < 256; ++i) src[i] = 1.0f + i;
  std::vector<unsigned> seen(32 * 6, 0);
  launch(cp_async_groups_kernel, dim3(1), dim3(32), 256 * sizeof(float), nullptr, src.data(), seen.data());
  for (int t = 0; t < 32; ++t) {
    const unsigned* o = &seen[t * 6];
    const unsigned a = bits_of(&src[t * 4]), b = bits_of(&src[128 + t * 4]);
    FA_CHECK(o[0] == 0xffffffffu && o[1] == 0xffffffffu, "t=%d: not poison before any wait (%08x %08x)", t, o[0], o[1]);
    FA_CHECK(o[2] == a && o[3] == 0xffffffffu, "t=%d: wait_group 1 must land the first group only (%08x %08x)", t,
             o[2], o[3]);
    FA_CHECK(o[4] == a && o[5] == b, "t=%d: wait_group 0 must land both groups", t);
  }
}

// With early landing on, copies may land at any collective before their wait.
__global__ void cp_async_early_kernel(const float* src, unsigned* landed_early) {
  FA_DYNAMIC_SHARED(float, smem);
  const int t = threadIdx.x;
  fc::cp_async<16>(smem + t * 4, src + t * 4);
  fc::cp_async_commit();
  for (int i = 0; i < 64; ++i) __syncwarp();
  landed_early[t] = bits_of(smem + t * 4) != 0xffffffffu;
  fc::cp_async_wait<0>();
}

FA_TEST(cp_async_early_landing_switch) {
  std::vector<float> src(128, 2.5f);
  for (bool early : {false, true}) {
    ScopedOptions opt(2, early, 42);
    std::vector<unsigned> landed(32, 7);
    launch(cp_async_early_kernel, dim3(1), dim3(32), 128 * sizeof(float), nullptr, src.data(), landed.data());
    unsigned n = 0;
    for (unsigned v : landed) n += v;
    if (early) FA_CHECK(n > 0, "early landing on: no copy landed before its wait");
    else FA_CHECK(n == 0, "early landing off: %u copies landed before their wait", n);
  }
}

// A warp's copies published to the warp by __syncwarp() alone: legal, must not abort.
__global__ void syncwarp_publishes_kernel(const uint16_t* rows, uint32_t* out) {
  FA_DYNAMIC_SHARED(uint16_t, smem);
  const int lane = threadIdx.x;
  fc::cp_async<16>(smem + lane * 8, rows + lane * 8);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  __syncwarp();
  uint32_t r[4];
  fc::ldmatrix_x4(r, smem + ((lane + 5) % 32) * 8);  // every row comes from another lane's copy
  for (int m = 0; m < 4; ++m) out[lane * 4 + m] = r[m];
}

FA_TEST(syncwarp_publishes_cp_async_to_its_warp) {
  std::vector<uint16_t> rows(32 * 8);
  for (int i = 0; i < 256; ++i) rows[i] = static_cast<uint16_t>(i);
  std::vector<uint32_t> out(128, 0);
  launch(syncwarp_publishes_kernel, dim3(1), dim3(32), 512, nullptr, rows.data(), out.data());
  for (int lane = 0; lane < 32; ++lane)
    for (int m = 0; m < 4; ++m) {
      const int row = (8 * m + lane / 4 + 5) % 32, col = 2 * (lane % 4);
      const uint32_t want = uint32_t(row * 8 + col) | (uint32_t(row * 8 + col + 1) << 16);
      FA_CHECK(out[lane * 4 + m] == want, "lane %d matrix %d: %08x want %08x", lane, m, out[lane * 4 + m], want);
    }
}

// Every block finds its static __shared__ variables poisoned, whatever the previous block
// on the same slot left there, and no two blocks in flight share them.
__global__ void static_shared_kernel(unsigned* before, unsigned* after, std::uintptr_t* where) {
  __shared__ unsigned buf[64];
  __align__(16) __shared__ unsigned short halves[8];
  __shared__ int counter;
  const int t = threadIdx.x, b = blockIdx.x;
  before[b * 64 + t] = buf[t];
  if (t == 0) {
    before[gridDim.x * 64 + b] = counter;
    where[b * 2] = reinterpret_cast<std::uintptr_t>(buf);
    where[b * 2 + 1] = reinterpret_cast<std::uintptr_t>(halves);
  }
  __syncthreads();
  buf[t] = 1000u * b + t;
  if (t == 0) counter = b;
  __syncthreads();
  after[b * 64 + t] = buf[63 - t] + static_cast<unsigned>(counter - b);  // counter == b
}

FA_TEST(static_shared_per_block_and_poisoned) {
  ScopedOptions opt(2, true);
  const int blocks = 6;
  std::vector<unsigned> before(blocks * 64 + blocks, 0), after(blocks * 64, 0);
  std::vector<std::uintptr_t> where(blocks * 2, 0);
  launch(static_shared_kernel, dim3(blocks), dim3(64), 0, nullptr, before.data(), after.data(), where.data());
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < 64; ++t) {
      FA_CHECK(before[b * 64 + t] == 0xffffffffu, "block %d t=%d read %08x before writing, want poison", b, t,
               before[b * 64 + t]);
      FA_CHECK(after[b * 64 + t] == 1000u * b + 63 - t, "block %d t=%d", b, t);
    }
    FA_CHECK(before[blocks * 64 + b] == 0xffffffffu, "block %d: scalar __shared__ not poisoned", b);
    FA_CHECK(where[b * 2 + 1] % 16 == 0, "block %d: __align__(16) __shared__ at %zx", b, size_t(where[b * 2 + 1]));
  }
  // Blocks 0 and 1 start together, on different slots.
  FA_CHECK(where[0] != where[2], "blocks 0 and 1 share their static __shared__ array");
}

// Blocks 0 and 1 each wait for the other to have started: only possible if both run at once.
__global__ void handshake_kernel(std::atomic<int>* started, int* met) {
  if (threadIdx.x != 0) return;
  const int b = blockIdx.x;
  started[b].store(1);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (started[1 - b].load() == 0 && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
  met[b] = started[1 - b].load();
}

FA_TEST(two_blocks_run_concurrently) {
  ScopedOptions opt(2, true);
  std::atomic<int> started[2] = {0, 0};
  int met[2] = {0, 0};
  launch(handshake_kernel, dim3(2), dim3(64), 0, nullptr, started, met);
  FA_CHECK(met[0] == 1 && met[1] == 1, "blocks 0 and 1 did not run at the same time (%d %d)", met[0], met[1]);
}

// Lane-dependent masks that each name one quad: legal, as the quad reductions of mma code use.
__global__ void quad_mask_kernel(int* out) {
  const int lane = threadIdx.x % 32;
  const unsigned quad = 0xfu << (lane & ~3);
  int v = lane;
  v += __shfl_xor_sync(quad, v, 1);
  v += __shfl_xor_sync(quad, v, 2);
  out[threadIdx.x] = v;
}

FA_TEST(shuffle_quad_masks) {
  std::vector<int> out(64, -1);
  launch(quad_mask_kernel, dim3(1), dim3(64), 0, nullptr, out.data());
  for (int t = 0; t < 64; ++t) {
    const int q = (t % 32) & ~3;
    FA_CHECK(out[t] == 4 * q + 6, "t=%d: %d want %d", t, out[t], 4 * q + 6);
  }
}

}  // namespace
