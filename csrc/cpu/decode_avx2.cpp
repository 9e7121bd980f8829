// KV-cache decoding kernels (decode_impl.h) compiled for one instruction set:
// AVX2 + FMA: Haswell and later, Zen 1-3; bf16 runs through fp32.
// The target comes from the pragma below, not from compiler flags, so the module loads
// on any x86-64 CPU; attention.cpp calls this copy only when the CPU has the features.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attention.h"
#include "simd_math.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#endif

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in intrinsics headers
#define FA_ISA avx2
#define FA_VEC_BITS 256
#include "decode_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
