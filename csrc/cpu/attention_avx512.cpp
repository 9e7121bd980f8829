// CPU attention kernels compiled for one instruction set (see isa_unit.h):
// AVX-512 (F/BW/DQ/VL) without BF16 dot products: Skylake-X to Ice Lake; bf16 runs through fp32.
#define FA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2"
#define FA_IMPL "attention_impl.h"
#define FA_ISA avx512
#define FA_VEC_BITS 512
#define FA_DPBF16 0
#include "isa_unit.h"
