// The body of every per-instruction-set translation unit (attention_<isa>.cpp, decode_<isa>.cpp):
// it compiles the kernel header FA_IMPL with the target features FA_TARGET switched on for its
// functions. The target comes from a pragma, not from compiler flags, so the module loads on
// any x86-64 CPU; attention.cpp calls a copy only when the CPU has its features.
//
// The including file defines, before including this one:
//   FA_TARGET    the feature string of GCC/clang's target attribute, e.g. "avx2,fma,f16c,bmi,bmi2"
//   FA_IMPL      the kernel header to compile, e.g. "attention_impl.h"
//   FA_ISA, FA_VEC_BITS (and FA_DPBF16 for attention_impl.h): read by the kernel header.
// No include guard: each unit includes it exactly once.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attention.h"
#include "common/dtype.h"
#include "simd_math.h"

// _Pragma takes a string literal: two levels so that FA_TARGET is expanded before it is quoted.
#define FA_PRAGMA_QUOTED(x) _Pragma(#x)
#define FA_PRAGMA(x) FA_PRAGMA_QUOTED(x)

#if defined(__clang__)
FA_PRAGMA(clang attribute push(__attribute__((target(FA_TARGET))), apply_to = function))
#else
#pragma GCC push_options
FA_PRAGMA(GCC target(FA_TARGET))
#endif

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in intrinsics headers
#include FA_IMPL

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
