// 16-byte vector loads and stores: the widest single memory instruction (ld.global.v4.b32).
// Vec<T, N> holds N elements of T in sizeof(T) * N bytes with that alignment; the caller
// guarantees the address is aligned (kernels check alignment once and fall back to scalar
// accesses for ragged tails and misaligned rows).
#pragma once

#include "convert.cuh"

namespace fastattn::cuda {

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements of T in one 16-byte access.
template <typename T>
constexpr int kVec16 = 16 / static_cast<int>(sizeof(T));

// The host SIMT build aborts on a misaligned address, which the GPU faults on (misaligned
// address error) but an x86 CPU would silently accept.
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* ptr) {
#if defined(FASTATTN_SIM)
  ::fastattn::sim::check_vector_access(ptr, sizeof(Vec<T, N>), "vector load");
#endif
  return *reinterpret_cast<const Vec<T, N>*>(ptr);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* ptr, const Vec<T, N>& v) {
#if defined(FASTATTN_SIM)
  ::fastattn::sim::check_vector_access(ptr, sizeof(Vec<T, N>), "vector store");
#endif
  *reinterpret_cast<Vec<T, N>*>(ptr) = v;
}

// Loads N elements widened to float.
template <typename T, int N>
__device__ __forceinline__ void load_float(const T* ptr, float (&out)[N]) {
  const Vec<T, N> v = load_vec<T, N>(ptr);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(v.v[i]);
}

// Stores N floats rounded to T.
template <typename T, int N>
__device__ __forceinline__ void store_float(T* ptr, const float (&in)[N]) {
  Vec<T, N> v;
#pragma unroll
  for (int i = 0; i < N; ++i) v.v[i] = from_float<T>(in[i]);
  store_vec<T, N>(ptr, v);
}

__device__ __forceinline__ bool is_aligned(const void* ptr, int bytes) {
  return (reinterpret_cast<std::uintptr_t>(ptr) % static_cast<std::uintptr_t>(bytes)) == 0;
}

// A chunk of up to N consecutive elements widened to float: one 16-byte access when
// `vec` (the caller checked alignment and n == N), else n scalar accesses (ragged tails,
// misaligned rows, non-unit strides). Lanes past n are set to 0.
template <typename T, int N>
__device__ __forceinline__ void load_chunk(const T* ptr, int n, bool vec, float (&out)[N]) {
  if (vec) {
    load_float<T, N>(ptr, out);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = i < n ? to_float(ptr[i]) : 0.0f;
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_chunk(T* ptr, int n, bool vec, const float (&in)[N]) {
  if (vec) {
    store_float<T, N>(ptr, in);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) ptr[i] = from_float<T>(in[i]);
  }
}

}  // namespace fastattn::cuda
