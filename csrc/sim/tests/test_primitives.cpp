// The project's kernel primitives (csrc/cuda/common) run through the host SIMT runtime:
// warp and block reductions, vector loads/stores, conversions.
#include <cmath>
#include <random>
#include <vector>

#include "check.h"
#include "common/reduce.cuh"
#include "common/vec.cuh"

namespace fc = fastattn::cuda;
using fc::launch;

namespace {

__global__ void warp_reduce_kernel(const float* in, float* sum, float* mx) {
  const int t = threadIdx.x;
  sum[t] = fc::warp_allreduce_sum(in[t]);
  mx[t] = fc::warp_allreduce_max(in[t]);
}

FA_TEST(warp_allreduce) {
  std::vector<float> in(64), sum(64), mx(64);
  for (int i = 0; i < 64; ++i) in[i] = static_cast<float>((i * 29) % 64) - 20.0f;  // integers: exact sums
  launch(warp_reduce_kernel, dim3(1), dim3(64), 0, nullptr, in.data(), sum.data(), mx.data());
  for (int w = 0; w < 2; ++w) {
    float s = 0, m = -INFINITY;
    for (int l = 0; l < 32; ++l) s += in[w * 32 + l], m = std::max(m, in[w * 32 + l]);
    for (int l = 0; l < 32; ++l) {
      FA_CHECK(sum[w * 32 + l] == s, "warp %d lane %d sum %f want %f", w, l, sum[w * 32 + l], s);
      FA_CHECK(mx[w * 32 + l] == m, "warp %d lane %d max", w, l);
    }
  }
}

// Two reductions back to back through the same scratch, in a 2-D block.
__global__ void block_reduce_kernel(const float* in, float* sum, float* mx) {
  __shared__ float scratch[32];
  const int n = blockDim.x * blockDim.y;
  const int t = threadIdx.x + blockDim.x * threadIdx.y;
  const float v = in[blockIdx.x * n + t];
  const float s = fc::block_allreduce_sum(v, scratch);
  const float m = fc::block_allreduce_max(v, scratch);
  sum[blockIdx.x * n + t] = s;
  mx[blockIdx.x * n + t] = m;
}

FA_TEST(block_allreduce) {
  for (dim3 block : {dim3(32), dim3(96), dim3(64, 4), dim3(512)}) {
    const int n = block.x * block.y, blocks = 3;
    std::vector<float> in(n * blocks), sum(n * blocks, NAN), mx(n * blocks, NAN);
    std::mt19937 rng(n);
    std::uniform_int_distribution<int> dist(-1000, 1000);
    for (auto& x : in) x = static_cast<float>(dist(rng));  // integers: the sum is exact in any order
    launch(block_reduce_kernel, dim3(blocks), block, 0, nullptr, in.data(), sum.data(), mx.data());
    for (int b = 0; b < blocks; ++b) {
      float s = 0, m = -INFINITY;
      for (int i = 0; i < n; ++i) s += in[b * n + i], m = std::max(m, in[b * n + i]);
      for (int i = 0; i < n; ++i) {
        FA_CHECK(sum[b * n + i] == s, "n=%d block %d thread %d: %f want %f", n, b, i, sum[b * n + i], s);
        FA_CHECK(mx[b * n + i] == m, "n=%d block %d thread %d max", n, b, i);
      }
    }
  }
}

template <typename T>
__global__ void vec_roundtrip_kernel(const T* in, T* out, float* widened) {
  constexpr int N = fc::kVec16<T>;
  const int i = threadIdx.x * N;
  float f[N];
  fc::load_float<T, N>(in + i, f);
  for (int k = 0; k < N; ++k) widened[i + k] = f[k];
  fc::store_float<T, N>(out + i, f);
}

template <typename T>
void check_vec_roundtrip() {
  constexpr int N = fc::kVec16<T>;
  const int n = 64 * N;
  std::vector<T> in(n), out(n);
  std::vector<float> widened(n);
  for (int i = 0; i < n; ++i) in[i] = fc::from_float<T>(0.37f * i - 11.0f);
  launch(vec_roundtrip_kernel<T>, dim3(1), dim3(64), 0, nullptr, in.data(), out.data(), widened.data());
  for (int i = 0; i < n; ++i) {
    FA_CHECK(widened[i] == fc::to_float(in[i]), "widen %d", i);
    FA_CHECK(fc::to_float(out[i]) == fc::to_float(in[i]), "store %d", i);
  }
  FA_CHECK(sizeof(fc::Vec<T, N>) == 16 && alignof(fc::Vec<T, N>) == 16, "Vec is 16 bytes, 16-aligned");
}

FA_TEST(vector_load_store) {
  check_vec_roundtrip<float>();
  check_vec_roundtrip<__half>();
  check_vec_roundtrip<__nv_bfloat16>();
}

}  // namespace
