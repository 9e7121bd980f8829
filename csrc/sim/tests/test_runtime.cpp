// Unit tests of the host SIMT runtime itself: thread/block coordinates, __syncthreads with
// static and dynamic shared memory, warp shuffles (every mode and width, edge lanes,
// partial warps), votes, atomics, early-returning threads.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"
#include "common/platform.cuh"

using fastattn::cuda::launch;

namespace {

__global__ void coords_kernel(unsigned* out) {
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  unsigned* o = out + 4 * (bid * nthreads + tid);
  o[0] = threadIdx.x | (threadIdx.y << 8) | (threadIdx.z << 16);
  o[1] = blockIdx.x | (blockIdx.y << 8) | (blockIdx.z << 16);
  o[2] = blockDim.x | (blockDim.y << 8) | (blockDim.z << 16);
  o[3] = gridDim.x | (gridDim.y << 8) | (gridDim.z << 16);
}

FA_TEST(coordinates_3d) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);  // 24 threads: one partial warp
  std::vector<unsigned> out(4 * 12 * 24, 0xdeadbeefu);
  launch(coords_kernel, grid, block, 0, nullptr, out.data());
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx) {
              const unsigned bid = bx + 3 * (by + 2 * bz), tid = tx + 4 * (ty + 3 * tz);
              const unsigned* o = &out[4 * (bid * 24 + tid)];
              FA_CHECK(o[0] == (tx | ty << 8 | tz << 16), "thread (%u,%u,%u)", tx, ty, tz);
              FA_CHECK(o[1] == (bx | by << 8 | bz << 16), "block (%u,%u,%u)", bx, by, bz);
              FA_CHECK(o[2] == (4u | 3u << 8 | 2u << 16), "blockDim");
              FA_CHECK(o[3] == (3u | 2u << 8 | 2u << 16), "gridDim");
            }
}

// Each block reverses its slice through static shared memory; blocks run two at a time, each
// with its own instance of the array, so this also checks that they do not share it.
__global__ void reverse_static_kernel(const float* in, float* out) {
  __shared__ float buf[128];
  const int t = threadIdx.x, base = blockIdx.x * 128;
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[127 - t];
}

FA_TEST(syncthreads_static_shared) {
  const int blocks = 6;
  std::vector<float> in(blocks * 128), out(blocks * 128, NAN);
  for (size_t i = 0; i < in.size(); ++i) in[i] = 0.5f * static_cast<float>(i) + 1.0f;
  launch(reverse_static_kernel, dim3(blocks), dim3(128), 0, nullptr, in.data(), out.data());
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < 128; ++t) FA_CHECK(out[b * 128 + t] == in[b * 128 + 127 - t], "b=%d t=%d", b, t);
}

// Dynamic shared memory: poisoned (all bits set) at block start, sized by the launch.
__global__ void reverse_dynamic_kernel(const float* in, float* out, unsigned* poison) {
  FA_DYNAMIC_SHARED(float, buf);
  const int n = blockDim.x, t = threadIdx.x, base = blockIdx.x * n;
  unsigned bits;
  std::memcpy(&bits, &buf[n + t], 4);  // the second half is never written
  poison[base + t] = bits;
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[n - 1 - t];
}

FA_TEST(syncthreads_dynamic_shared) {
  const int blocks = 3, n = 96;
  std::vector<float> in(blocks * n), out(blocks * n, NAN);
  std::vector<unsigned> poison(blocks * n, 0);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) - 7.25f;
  launch(reverse_dynamic_kernel, dim3(blocks), dim3(n), 2 * n * sizeof(float), nullptr, in.data(), out.data(),
         poison.data());
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t) {
      FA_CHECK(out[b * n + t] == in[b * n + n - 1 - t], "b=%d t=%d", b, t);
      FA_CHECK(poison[b * n + t] == 0xffffffffu, "poison b=%d t=%d: %08x", b, t, poison[b * n + t]);
    }
}

// Expected source lane of each shuffle, from the CUDA programming guide's description
// (independent of the PTX segmask formulation the runtime uses).
int expected_src(int mode, int lane, int b, int width) {
  const int seg = lane / width * width, pos = lane % width;
  switch (mode) {
    case 0: return seg + b % width;                                  // __shfl_sync
    case 1: return pos >= b ? lane - b : lane;                       // __shfl_up_sync
    case 2: return pos + b < width ? lane + b : lane;                // __shfl_down_sync
    default: {                                                       // __shfl_xor_sync
      const int src = lane ^ b;
      return src / width > lane / width ? lane : src;  // later segments are out of reach
    }
  }
}

__global__ void shuffle_kernel(int mode, int b, int width, int* out) {
  const int tid = threadIdx.x;
  const int val = 1000 + tid;
  int r = 0;
  switch (mode) {
    case 0: r = __shfl_sync(0xffffffffu, val, b, width); break;
    case 1: r = __shfl_up_sync(0xffffffffu, val, b, width); break;
    case 2: r = __shfl_down_sync(0xffffffffu, val, b, width); break;
    default: r = __shfl_xor_sync(0xffffffffu, val, b, width); break;
  }
  out[tid] = r;
}

FA_TEST(shuffles_all_modes_widths_edge_lanes) {
  const int nthreads = 64;
  std::vector<int> out(nthreads);
  const char* names[] = {"idx", "up", "down", "xor"};
  for (int mode = 0; mode < 4; ++mode)
    for (int width = 1; width <= 32; width *= 2)
      for (int b : {0, 1, 2, 3, 5, 7, 8, 15, 16, 17, 31}) {
        std::fill(out.begin(), out.end(), -1);
        launch(shuffle_kernel, dim3(1), dim3(nthreads), 0, nullptr, mode, b, width, out.data());
        for (int t = 0; t < nthreads; ++t) {
          const int lane = t % 32, warp = t / 32;
          const int want = 1000 + warp * 32 + expected_src(mode, lane, b, width);
          FA_CHECK(out[t] == want, "%s width=%d b=%d lane %d: got %d want %d", names[mode], width, b, t, out[t],
                   want);
        }
      }
}

FA_TEST(shuffles_partial_warp) {
  // 48 threads: the second warp has 16 lanes. Segments of at most 16 lanes keep every source
  // among the lanes that exist (reading a missing lane aborts: tests/test_sim_checks.py).
  const int nthreads = 48;
  std::vector<int> out(nthreads);
  for (int mode = 0; mode < 4; ++mode)
    for (int width : {4, 8, 16})
      for (int b : {1, 3, 8}) {
        launch(shuffle_kernel, dim3(1), dim3(nthreads), 0, nullptr, mode, b, width, out.data());
        for (int t = 0; t < nthreads; ++t) {
          const int lane = t % 32, warp = t / 32;
          const int src = warp * 32 + expected_src(mode, lane, b, width);
          if (src < nthreads) FA_CHECK(out[t] == 1000 + src, "mode %d width=%d b=%d lane %d", mode, width, b, t);
        }
      }
}

__global__ void shuffle_types_kernel(double* d, float* f, long long* ll) {
  const int t = threadIdx.x;
  d[t] = __shfl_xor_sync(0xffffffffu, 0.5 + t, 1);
  f[t] = __shfl_down_sync(0xffffffffu, -1.5f * t, 4);
  ll[t] = __shfl_sync(0xffffffffu, (1ll << 40) + t, 31);
}

FA_TEST(shuffle_operand_types) {
  std::vector<double> d(32);
  std::vector<float> f(32);
  std::vector<long long> ll(32);
  launch(shuffle_types_kernel, dim3(1), dim3(32), 0, nullptr, d.data(), f.data(), ll.data());
  for (int t = 0; t < 32; ++t) {
    FA_CHECK(d[t] == 0.5 + (t ^ 1), "double lane %d", t);
    FA_CHECK(f[t] == -1.5f * (t + 4 < 32 ? t + 4 : t), "float lane %d", t);
    FA_CHECK(ll[t] == (1ll << 40) + 31, "long long lane %d", t);
  }
}

__global__ void vote_kernel(int modulus, unsigned* ballot, int* any, int* all, unsigned* active) {
  const int t = threadIdx.x;
  const bool pred = (t % modulus) == 0;
  active[t] = __activemask();  // before the collectives: no lane of the warp has returned yet
  ballot[t] = __ballot_sync(0xffffffffu, pred);
  any[t] = __any_sync(0xffffffffu, pred);
  all[t] = __all_sync(0xffffffffu, pred);
}

FA_TEST(votes) {
  for (int nthreads : {64, 40}) {
    for (int modulus : {1, 3, 32, 33, 100}) {
      std::vector<unsigned> ballot(nthreads), active(nthreads);
      std::vector<int> any(nthreads), all(nthreads);
      launch(vote_kernel, dim3(1), dim3(nthreads), 0, nullptr, modulus, ballot.data(), any.data(), all.data(),
             active.data());
      for (int t = 0; t < nthreads; ++t) {
        const int warp = t / 32, lanes = std::min(32, nthreads - warp * 32);
        unsigned want = 0;
        for (int l = 0; l < lanes; ++l)
          if ((warp * 32 + l) % modulus == 0) want |= 1u << l;
        const unsigned live = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
        FA_CHECK(ballot[t] == want, "n=%d mod=%d t=%d ballot %08x want %08x", nthreads, modulus, t, ballot[t], want);
        FA_CHECK(any[t] == (want != 0), "any n=%d mod=%d t=%d", nthreads, modulus, t);
        FA_CHECK(all[t] == (want == live), "all n=%d mod=%d t=%d", nthreads, modulus, t);
        FA_CHECK(active[t] == live, "activemask n=%d t=%d", nthreads, t);
      }
    }
  }
}

__global__ void atomics_kernel(float* fsum, int* isum, int* imax, unsigned* cas_count, unsigned long long* exch) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 0.25f);
  atomicAdd(isum, g);
  atomicMax(imax, (g * 37) % 1001);
  unsigned old = 0, assumed;  // a guess; the CAS returns the real value when it is wrong
  do {  // the classic CAS loop
    assumed = old;
    old = atomicCAS(cas_count, assumed, assumed + 1u);
  } while (old != assumed);
  atomicExch(exch, 42ull);
}

FA_TEST(atomics) {
  float fsum = 0.0f;
  int isum = 0, imax = -1;
  unsigned cas = 0;
  unsigned long long exch = 0;
  launch(atomics_kernel, dim3(4), dim3(64), 0, nullptr, &fsum, &isum, &imax, &cas, &exch);
  int want_max = -1;
  for (int g = 0; g < 256; ++g) want_max = std::max(want_max, (g * 37) % 1001);
  FA_CHECK(fsum == 64.0f, "float atomicAdd %f", fsum);
  FA_CHECK(isum == 255 * 256 / 2, "int atomicAdd %d", isum);
  FA_CHECK(imax == want_max, "atomicMax %d want %d", imax, want_max);
  FA_CHECK(cas == 256u, "atomicCAS loop %u", cas);
  FA_CHECK(exch == 42ull, "atomicExch");
}

// Threads that return early leave the block's barrier and their warp's collectives.
__global__ void early_exit_kernel(int keep, float* out) {
  __shared__ float buf[128];
  const int t = threadIdx.x;
  if (t >= keep) return;
  buf[t] = static_cast<float>(t);
  __syncthreads();
  float v = buf[keep - 1 - t];
  v += __shfl_xor_sync(__activemask(), v, 1);
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = v;
}

FA_TEST(early_return_threads) {
  // 2 full warps and 6 lanes of the third: every xor partner is still running (reading a
  // lane that returned is undefined on the GPU, and aborts here).
  const int keep = 70;
  std::vector<float> out(2 * 128, NAN);
  launch(early_exit_kernel, dim3(2), dim3(128), 0, nullptr, keep, out.data());
  for (int b = 0; b < 2; ++b) {
    for (int t = 0; t < keep; ++t) {
      const float want = static_cast<float>(keep - 1 - t) + static_cast<float>(keep - 1 - (t ^ 1));
      FA_CHECK(out[b * 128 + t] == want, "block %d t=%d got %f want %f", b, t, out[b * 128 + t], want);
    }
    for (int t = keep; t < 128; ++t) FA_CHECK(std::isnan(out[b * 128 + t]), "block %d t=%d written", b, t);
  }
}

__global__ void math_kernel(float* out) {
  out[0] = __expf(1.0f);
  out[1] = __fdividef(1.0f, 3.0f);
  out[2] = rsqrtf(16.0f);
  out[3] = __logf(8.0f);
  out[4] = __saturatef(1.5f);
  out[5] = __int_as_float(__float_as_int(-2.5f));
  out[6] = static_cast<float>(__popc(0xf0f0u) + __clz(1) + __ffs(8));
  out[7] = tanhf(0.5f) + erff(0.5f);
}

FA_TEST(math_intrinsics) {
  std::vector<float> out(8, NAN);
  launch(math_kernel, dim3(1), dim3(1), 0, nullptr, out.data());
  FA_CHECK(std::fabs(out[0] - 2.7182818f) < 1e-6f, "__expf");
  FA_CHECK(std::fabs(out[1] - 1.0f / 3.0f) < 1e-7f, "__fdividef");
  FA_CHECK(out[2] == 0.25f, "rsqrtf");
  FA_CHECK(std::fabs(out[3] - 2.0794415f) < 1e-6f, "__logf");
  FA_CHECK(out[4] == 1.0f, "__saturatef");
  FA_CHECK(out[5] == -2.5f, "bit casts");
  FA_CHECK(out[6] == 8.0f + 31.0f + 4.0f, "bit counts");
  FA_CHECK(std::fabs(out[7] - (std::tanh(0.5f) + std::erf(0.5f))) < 1e-6f, "tanhf/erff");
}

}  // namespace
