// Run-time choice of the CPU attention kernels by the features of this CPU (cpuid via
// __builtin_cpu_supports); see attention_impl.h for the algorithm.
#include "attention.h"

#include <stdexcept>
#include <string>

namespace fastattn::cpu {

namespace {

enum class Isa { kNone, kAvx2, kAvx512, kAvx512Bf16 };

Isa detect_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  if (avx512 && __builtin_cpu_supports("avx512bf16")) return Isa::kAvx512Bf16;
  if (avx512) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kNone;
}

Isa g_override = Isa::kNone;  // set by attention_use_isa (tests); kNone = use the CPU's best

Isa isa() {
  static const Isa best = detect_isa();
  return g_override != Isa::kNone && g_override <= best ? g_override : best;
}

}  // namespace

const char* attention_isa() {
  switch (isa()) {
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "none";
  }
}

bool attention_use_isa(const char* name) {
  const std::string n = name ? name : "";
  Isa want = Isa::kNone;
  if (n == "avx512bf16") want = Isa::kAvx512Bf16;
  else if (n == "avx512") want = Isa::kAvx512;
  else if (n == "avx2") want = Isa::kAvx2;
  else if (!n.empty() && n != "auto") return false;
  if (want > detect_isa()) return false;
  g_override = want;
  return true;
}

void attention_fwd(const AttnParams& p) {
  switch (isa()) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case Isa::kAvx512Bf16: return avx512bf16::attention_fwd(p);
    case Isa::kAvx512: return avx512::attention_fwd(p);
    case Isa::kAvx2: return avx2::attention_fwd(p);
#endif
    default: throw std::runtime_error("fastattn CPU attention needs an x86-64 CPU with AVX2 and FMA");
  }
}

void attention_bwd(const AttnParams& p) {
  switch (isa()) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case Isa::kAvx512Bf16: return avx512bf16::attention_bwd(p);
    case Isa::kAvx512: return avx512::attention_bwd(p);
    case Isa::kAvx2: return avx2::attention_bwd(p);
#endif
    default: throw std::runtime_error("fastattn CPU attention needs an x86-64 CPU with AVX2 and FMA");
  }
}

void decode_fwd(const AttnParams& p) {
  switch (isa()) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    case Isa::kAvx512Bf16:
    case Isa::kAvx512: return avx512::decode_fwd(p);
    case Isa::kAvx2: return avx2::decode_fwd(p);
#endif
    default: throw std::runtime_error("fastattn CPU attention needs an x86-64 CPU with AVX2 and FMA");
  }
}

}  // namespace fastattn::cpu
