// What the attention kernels (attention_impl.h) and the decoding kernels (decode_impl.h)
// share: the vector wrapper `Vec`, index arithmetic, aligned scratch buffers, element
// conversion by dtype code and the log2-domain logit. Included by each of them inside its
// per-ISA anonymous namespace, so every instruction set gets its own copies (see the note
// on the standard library in attention_impl.h). Defines FA_INLINE, which the including
// header #undefs at its end; no include guard, as attention_simd.h.
//
// Element types are the fastattn::DType codes of csrc/common/dtype.h (included by
// isa_unit.h before its target pragma), as template arguments: kF32, kF16, kBF16 below.

#define FA_INLINE inline __attribute__((always_inline))

#include "attention_simd.h"

constexpr int kF32 = static_cast<int>(DType::kFloat32);
constexpr int kF16 = static_cast<int>(DType::kFloat16);
constexpr int kBF16 = static_cast<int>(DType::kBFloat16);

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int W = Vec::W;
using R = Vec::R;

FA_INLINE int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
FA_INLINE int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }
FA_INLINE int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
FA_INLINE int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// n elements of T, 64-byte aligned (at least one element, so never a null buffer); free().
template <class T>
T* alloc(int64_t n) {
  size_t bytes = (size_t)round_up(imax(n, 1) * (int64_t)sizeof(T), 64);
  return static_cast<T*>(aligned_alloc(64, bytes));
}

// Element i of a buffer of dtype code DT, as / from fp32.
template <int DT>
FA_INLINE float load_elem(const void* base, int64_t i) {
  if constexpr (DT == kF32) return static_cast<const float*>(base)[i];
  else if constexpr (DT == kF16) return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  else return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
}
template <int DT>
FA_INLINE void store_elem(void* base, int64_t i, float x) {
  if constexpr (DT == kF32) static_cast<float*>(base)[i] = x;
  else if constexpr (DT == kF16) static_cast<uint16_t*>(base)[i] = f32_to_f16(x);
  else static_cast<uint16_t*>(base)[i] = f32_to_bf16(x);
}

// Runs F<DT>(args...) for the run-time dtype code `code` (an entry point's last step).
#define FA_BY_DTYPE(code, F, ...)              \
  switch (code) {                              \
    case kF32: F<kF32>(__VA_ARGS__); break;    \
    case kF16: F<kF16>(__VA_ARGS__); break;    \
    default: F<kBF16>(__VA_ARGS__); break;     \
  }

// t * log2(e) for a finite logit t, saturated at +-FLT_MAX where the product overflows
// (|t| > FLT_MAX / log2(e): an additive mask holding finfo(float32).min does that). A
// finite mask value is a number, as in torch, and only -inf hides a key: a row whose
// every score sits at the saturation point is a row of equal logits, whose softmax is
// the uniform average torch gives, not a row of hidden keys. NaN stays NaN.
FA_INLINE float to_log2(float t) {
  const float z = t * kLog2e;
  return (__builtin_isinf(z) && !__builtin_isinf(t)) ? __builtin_copysignf(__FLT_MAX__, t) : z;
}
