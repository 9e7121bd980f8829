// KV-cache decoding kernels (decode_impl.h) compiled for one instruction set (see isa_unit.h):
// AVX-512 (F/BW/DQ/VL): also used where the CPU has AVX512-BF16 (bf16 is widened to fp32
// in registers; dot products in bf16 would not read fewer bytes, and reading is the cost).
#define FA_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2"
#define FA_IMPL "decode_impl.h"
#define FA_ISA avx512
#define FA_VEC_BITS 512
#include "isa_unit.h"
