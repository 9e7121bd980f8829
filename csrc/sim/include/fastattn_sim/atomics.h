// CUDA atomics for the host SIMT runtime, on std::atomic_ref so that ThreadSanitizer sees
// them as atomic accesses (and flags plain accesses racing with them).
#pragma once

#include <atomic>

template <typename T>
inline T __fa_sim_atomic_fetch_add(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
}

inline float atomicAdd(float* a, float v) { return __fa_sim_atomic_fetch_add(a, v); }
inline double atomicAdd(double* a, double v) { return __fa_sim_atomic_fetch_add(a, v); }
inline int atomicAdd(int* a, int v) { return __fa_sim_atomic_fetch_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __fa_sim_atomic_fetch_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __fa_sim_atomic_fetch_add(a, v);
}
inline int atomicSub(int* a, int v) { return std::atomic_ref<int>(*a).fetch_sub(v, std::memory_order_relaxed); }
inline unsigned atomicSub(unsigned* a, unsigned v) {
  return std::atomic_ref<unsigned>(*a).fetch_sub(v, std::memory_order_relaxed);
}

template <typename T>
inline T atomicExch(T* a, T v) { return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed); }

template <typename T>
inline T atomicCAS(T* a, T compare, T val) {
  std::atomic_ref<T>(*a).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;  // the old value, whether or not the swap happened
}

template <typename T, typename Op>
inline T __fa_sim_atomic_update(T* a, T v, Op op) {
  std::atomic_ref<T> ref(*a);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, op(old, v), std::memory_order_relaxed)) {
  }
  return old;
}

template <typename T>
inline T atomicMax(T* a, T v) { return __fa_sim_atomic_update(a, v, [](T x, T y) { return x > y ? x : y; }); }
template <typename T>
inline T atomicMin(T* a, T v) { return __fa_sim_atomic_update(a, v, [](T x, T y) { return x < y ? x : y; }); }
template <typename T>
inline T atomicAnd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_and(v, std::memory_order_relaxed); }
template <typename T>
inline T atomicOr(T* a, T v) { return std::atomic_ref<T>(*a).fetch_or(v, std::memory_order_relaxed); }
template <typename T>
inline T atomicXor(T* a, T v) { return std::atomic_ref<T>(*a).fetch_xor(v, std::memory_order_relaxed); }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
