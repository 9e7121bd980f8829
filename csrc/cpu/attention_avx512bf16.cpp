// CPU attention kernels compiled for one instruction set (see isa_unit.h):
// AVX-512 with AVX512-BF16 (VDPBF16PS for bf16 inputs): Zen 4+, Cooper Lake, Sapphire Rapids+.
#define FA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,bmi,bmi2"
#define FA_IMPL "attention_impl.h"
#define FA_ISA avx512bf16
#define FA_VEC_BITS 512
#define FA_DPBF16 1
#include "isa_unit.h"
