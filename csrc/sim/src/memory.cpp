// Shared memory as the hardware exposes it (see include/fastattn_sim/runtime.h): static
// __shared__ placement per block, cp.async groups, ldmatrix and vector-access checks.
//
// Shadow records, one pair per 4-byte word of a slot's arena, all relaxed atomics (they must
// not create happens-before edges, or ThreadSanitizer would stop seeing the races they sit
// beside):
//   write record: kind (none / cp.async pending / cp.async waited for), the issuing thread,
//                 and the issuer's __syncthreads() and __syncwarp() counts when the copy
//                 was waited for (pending: when it was issued);
//   read record:  the __syncthreads() count of the last ldmatrix read and its warp (or
//                 "several warps" when more than one read it since that barrier).
// All threads of a block pass the same barriers, so comparing one thread's barrier count
// with another's tells whether a barrier separates their two accesses.
#include <cstdint>
#include <cstring>
#include <thread>

#include "fastattn_sim/runtime.h"

namespace fastattn::sim {

namespace {

constexpr std::uint64_t kPending = 1, kWaited = 2;  // 0: no cp.async record

struct WriteRecord {
  std::uint64_t kind;
  unsigned tid;
  std::uint32_t warp_syncs;  // low 20 bits
  std::uint32_t barriers;
};

std::uint64_t pack_write(std::uint64_t kind, unsigned tid, std::uint32_t warp_syncs, std::uint32_t barriers) {
  return kind | (std::uint64_t(tid & 0x3ffu) << 2) | (std::uint64_t(warp_syncs & 0xfffffu) << 12) |
         (std::uint64_t(barriers) << 32);
}

WriteRecord unpack_write(std::uint64_t v) {
  return {v & 3u, unsigned((v >> 2) & 0x3ffu), std::uint32_t((v >> 12) & 0xfffffu), std::uint32_t(v >> 32)};
}

constexpr std::uint64_t kReadValid = 1, kReadMany = 2;

std::uint64_t pack_read(bool many, unsigned warp, std::uint32_t barriers) {
  return kReadValid | (many ? kReadMany : 0) | (std::uint64_t(warp & 31u) << 2) | (std::uint64_t(barriers) << 32);
}

bool in_range(const unsigned char* p, std::size_t n, const unsigned char* lo, std::size_t len) {
  return p >= lo && p + n <= lo + len && p + n >= p;
}

// Whether [p, p + n) lies in the running block's placed static variables or its dynamic
// shared memory.
bool in_block_smem(const void* ptr, std::size_t n) {
  const BlockState& b = *g_ctx.block;
  const auto* p = static_cast<const unsigned char*>(ptr);
  return in_range(p, n, b.smem, b.static_used.load(std::memory_order_relaxed)) ||
         in_range(p, n, b.dynamic_smem, b.dynamic_smem_bytes);
}

// Whether [p, p + n) overlaps any block's shared memory arena in this launch.
bool in_any_arena(const void* ptr, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(ptr);
  for (const auto& [lo, hi] : g_ctx.block->launch->arenas)
    if (p < hi && p + n > lo) return true;
  return false;
}

std::size_t word_of(const void* p) {
  return static_cast<std::size_t>(static_cast<const unsigned char*>(p) - g_ctx.block->smem) / 4;
}

// Arena offset of a word, for messages.
std::size_t offset_of_word(std::size_t w) {
  const BlockState& b = *g_ctx.block;
  const std::size_t off = w * 4;
  return off >= static_cast<std::size_t>(b.dynamic_smem - b.smem) ? off - (b.dynamic_smem - b.smem) : off;
}

const char* region_of_word(std::size_t w) {
  const BlockState& b = *g_ctx.block;
  return w * 4 >= static_cast<std::size_t>(b.dynamic_smem - b.smem) ? "dynamic" : "static";
}

void mark_shadow_used() {
  BlockState& b = *g_ctx.block;
  if (!b.shadow_used.load(std::memory_order_relaxed)) b.shadow_used.store(true, std::memory_order_relaxed);
}

void land(AsyncCopy& cp) {
  if (!cp.landed) {
    std::memcpy(cp.dst, cp.data, cp.bytes);
    cp.landed = true;
    --g_ctx.async->unlanded;
  }
}

}  // namespace

void* static_shared(const void* key, std::size_t bytes, std::size_t align) {
  BlockState& b = *g_ctx.block;
  if (align < 16) align = 16;
  for (auto& v : b.static_vars) {
    const void* k = v.key.load(std::memory_order_relaxed);
    if (k == nullptr) {
      if (v.key.compare_exchange_strong(k, key, std::memory_order_relaxed)) {
        std::uint32_t used = b.static_used.load(std::memory_order_relaxed), off;
        do {
          off = static_cast<std::uint32_t>((used + align - 1) / align * align);
          if (off + bytes > kStaticSmemBytes)
            fail_here("static __shared__ variables take more than %zu bytes (CUDA's limit)", kStaticSmemBytes);
        } while (!b.static_used.compare_exchange_weak(used, static_cast<std::uint32_t>(off + bytes),
                                                      std::memory_order_relaxed));
        v.offset.store(off, std::memory_order_relaxed);
        return b.smem + off;
      }
      // Another thread took this entry first: for this key, or for another one.
    }
    if (k == key) {
      std::uint32_t off;
      while ((off = v.offset.load(std::memory_order_relaxed)) == BlockState::kUnplaced) std::this_thread::yield();
      return b.smem + off;
    }
  }
  fail_here("more than %d static __shared__ variables in one block", kMaxStaticSharedVars);
}

void cp_async_issue(void* smem_dst, const void* gmem_src, unsigned bytes, bool valid) {
  maybe_land_early();
  ThreadContext& c = g_ctx;
  BlockState& b = *c.block;
  if (reinterpret_cast<std::uintptr_t>(smem_dst) % bytes != 0)
    fail_here("cp.async destination %p is not %u-byte aligned", smem_dst, bytes);
  if (!in_block_smem(smem_dst, bytes))
    fail_here("cp.async destination %p is not shared memory of this block", smem_dst);
  if (valid) {
    if (reinterpret_cast<std::uintptr_t>(gmem_src) % bytes != 0)
      fail_here("cp.async source %p is not %u-byte aligned", gmem_src, bytes);
    if (in_any_arena(gmem_src, bytes))
      fail_here("cp.async source %p is shared memory: cp.async copies global to shared memory", gmem_src);
  }
  mark_shadow_used();
  const unsigned warp = c.tid / kWarpSize;
  const std::size_t w0 = word_of(smem_dst);
  for (std::size_t w = w0; w < w0 + bytes / 4; ++w) {
    const std::uint64_t rd = b.shadow_read[w].load(std::memory_order_relaxed);
    if ((rd & kReadValid) && std::uint32_t(rd >> 32) == c.barriers && ((rd & kReadMany) || ((rd >> 2) & 31u) != warp))
      fail_here("cp.async into %s shared memory at offset %zu, which %s read (ldmatrix) since the last "
                "__syncthreads(): this copy and that read are not separated by a barrier (a buffer is "
                "refilled while it is still being read)",
                region_of_word(w), offset_of_word(w), (rd & kReadMany) ? "several warps" : "another warp");
    const WriteRecord wr = unpack_write(b.shadow_write[w].load(std::memory_order_relaxed));
    if (wr.kind == kPending)
      fail_here("cp.async into %s shared memory at offset %zu, which a cp.async of thread %u still targets "
                "(not waited for): the two copies land in no defined order",
                region_of_word(w), offset_of_word(w), wr.tid);
    if (wr.kind == kWaited && wr.tid != c.tid && wr.barriers == c.barriers)
      fail_here("cp.async into %s shared memory at offset %zu, which a cp.async of thread %u wrote since the "
                "last __syncthreads()",
                region_of_word(w), offset_of_word(w), wr.tid);
    b.shadow_write[w].store(pack_write(kPending, c.tid, 0, c.barriers), std::memory_order_relaxed);
  }
  AsyncCopy cp;
  cp.dst = static_cast<unsigned char*>(smem_dst);
  cp.bytes = bytes;
  cp.landed = false;
  if (valid) std::memcpy(cp.data, gmem_src, bytes);
  else std::memset(cp.data, 0, bytes);  // the zero-fill form: src-size 0, the source is never read
  std::memset(smem_dst, 0xff, bytes);     // poison until the copy lands
  c.async->open.push_back(cp);
  ++c.async->unlanded;
}

void cp_async_commit() {
  maybe_land_early();
  AsyncState& a = *g_ctx.async;
  a.committed.push_back(std::move(a.open));
  a.open.clear();
}

void cp_async_wait(int pending) {
  ThreadContext& c = g_ctx;
  AsyncState& a = *c.async;
  BlockState& b = *c.block;
  std::size_t done = 0;
  while (a.committed.size() - done > static_cast<std::size_t>(pending < 0 ? 0 : pending)) {
    for (AsyncCopy& cp : a.committed[done]) {
      land(cp);
      const std::size_t w0 = word_of(cp.dst);
      for (std::size_t w = w0; w < w0 + cp.bytes / 4; ++w)
        b.shadow_write[w].store(pack_write(kWaited, c.tid, c.warp_syncs, c.barriers), std::memory_order_relaxed);
    }
    ++done;
  }
  a.committed.erase(a.committed.begin(), a.committed.begin() + static_cast<std::ptrdiff_t>(done));
}

void land_early_slow() {
  ThreadContext& c = g_ctx;
  if (!c.block->launch->early_copies) return;
  c.rng = c.rng * 6364136223846793005ull + 1442695040888963407ull;
  if ((c.rng >> 61) != 0) return;  // one hook in eight
  AsyncState& a = *c.async;
  // One group (a committed one or the open one), chosen at random, lands whole.
  const std::size_t groups = a.committed.size() + 1;
  const std::size_t g = static_cast<std::size_t>((c.rng >> 20) % groups);
  std::vector<AsyncCopy>& group = g < a.committed.size() ? a.committed[g] : a.open;
  for (AsyncCopy& cp : group) land(cp);
}

void ldmatrix_row(const void* row, int matrix) {
  ThreadContext& c = g_ctx;
  BlockState& b = *c.block;
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0)
    fail_here("ldmatrix row address %p (matrix %d) is not 16-byte aligned", row, matrix);
  if (!in_block_smem(row, 16))
    fail_here("ldmatrix row address %p (matrix %d) is not shared memory of this block", row, matrix);
  mark_shadow_used();
  const unsigned warp = c.tid / kWarpSize;
  const std::size_t w0 = word_of(row);
  for (std::size_t w = w0; w < w0 + 4; ++w) {
    const WriteRecord wr = unpack_write(b.shadow_write[w].load(std::memory_order_relaxed));
    if (wr.kind == kPending && wr.barriers < c.barriers)
      fail_here("ldmatrix reads %s shared memory at offset %zu, but the cp.async of thread %u that writes it "
                "was not waited for before the last __syncthreads(): the data may be read only after a "
                "cp_async_wait that covers the copy (missing, or waiting for too few groups) and then a barrier",
                region_of_word(w), offset_of_word(w), wr.tid);
    if (wr.kind == kPending)
      fail_here("ldmatrix reads %s shared memory at offset %zu, which a cp.async of thread %u (not yet waited "
                "for) writes since the last __syncthreads(): this read and that copy are not separated by a "
                "barrier",
                region_of_word(w), offset_of_word(w), wr.tid);
    if (wr.kind == kWaited) {
      const bool barrier_since = wr.barriers < c.barriers;
      const bool warp_sync_since = wr.tid / kWarpSize == warp && wr.warp_syncs < (c.warp_syncs & 0xfffffu);
      if (!barrier_since && !warp_sync_since)
        fail_here("ldmatrix reads %s shared memory at offset %zu that a cp.async of thread %u delivered with "
                  "no __syncthreads() since its cp_async_wait: the data is visible to other threads only "
                  "after a barrier",
                  region_of_word(w), offset_of_word(w), wr.tid);
    }
    std::uint64_t old = b.shadow_read[w].load(std::memory_order_relaxed), next;
    do {
      const bool same_epoch = (old & kReadValid) && std::uint32_t(old >> 32) == c.barriers;
      const bool many = same_epoch && ((old & kReadMany) || ((old >> 2) & 31u) != warp);
      next = pack_read(many, warp, c.barriers);
    } while (old != next && !b.shadow_read[w].compare_exchange_weak(old, next, std::memory_order_relaxed));
  }
}

void check_vector_access(const void* p, std::size_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes != 0)
    fail_here("%s of %zu bytes at %p is not %zu-byte aligned", what, bytes, p, bytes);
}

}  // namespace fastattn::sim
