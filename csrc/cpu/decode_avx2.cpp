// KV-cache decoding kernels (decode_impl.h) compiled for one instruction set (see isa_unit.h):
// AVX2 + FMA: Haswell and later, Zen 1-3; bf16 runs through fp32.
#define FA_TARGET "avx2,fma,f16c,bmi,bmi2"
#define FA_IMPL "decode_impl.h"
#define FA_ISA avx2
#define FA_VEC_BITS 256
#include "isa_unit.h"
