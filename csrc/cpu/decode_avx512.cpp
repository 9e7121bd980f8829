// KV-cache decoding kernels (decode_impl.h) compiled for one instruction set:
// AVX-512 (F/BW/DQ/VL): also used where the CPU has AVX512-BF16 (bf16 is widened to fp32
// in registers; dot products in bf16 would not read fewer bytes, and reading is the cost).
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
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2")
#endif

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive in intrinsics headers
#define FA_ISA avx512
#define FA_VEC_BITS 512
#include "decode_impl.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
