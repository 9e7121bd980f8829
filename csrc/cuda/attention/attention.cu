// Dispatch of the attention forward to its instantiations (inst/*.cu, one per dtype, head
// dim and causal flag; generate_instantiations.py writes them).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../common/dtype.h"
#include "attention.h"
#include "flash_fwd.cuh"

// Compiled in inst/*.cu.
FA_ATTN_FWD_EXTERN(__half, 64, false)
FA_ATTN_FWD_EXTERN(__half, 64, true)
FA_ATTN_FWD_EXTERN(__half, 128, false)
FA_ATTN_FWD_EXTERN(__half, 128, true)
FA_ATTN_FWD_EXTERN(__half, 256, false)
FA_ATTN_FWD_EXTERN(__half, 256, true)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 64, false)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 64, true)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 128, false)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 128, true)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 256, false)
FA_ATTN_FWD_EXTERN(__nv_bfloat16, 256, true)

namespace fastattn::cuda {

namespace {
// The kernel's head dim for a call's: the next of 64, 128 and 256 (the kernel zero-fills the rest).
int padded_head_dim(int64_t head_dim) { return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256; }

template <typename T>
void run_for_type(const AttnFwdParams& p, void* stream) {
  switch (padded_head_dim(p.head_dim)) {
    case 64: return p.causal ? attn::run_flash_fwd<T, 64, true>(p, stream) : attn::run_flash_fwd<T, 64, false>(p, stream);
    case 128:
      return p.causal ? attn::run_flash_fwd<T, 128, true>(p, stream) : attn::run_flash_fwd<T, 128, false>(p, stream);
    case 256:
      return p.causal ? attn::run_flash_fwd<T, 256, true>(p, stream) : attn::run_flash_fwd<T, 256, false>(p, stream);
  }
  throw std::invalid_argument("attention_fwd: head dim " + std::to_string(p.head_dim) + " not compiled");
}
}  // namespace

bool attention_fwd_supported(int dtype, int64_t head_dim) {
  const bool type_ok = dtype == static_cast<int>(DType::kFloat16) || dtype == static_cast<int>(DType::kBFloat16);
  return type_ok && head_dim >= 8 && head_dim <= 256 && head_dim % 8 == 0;
}

void check_attention_problem(const AttnFwdParams& p, const char* op) {
  const auto fail = [op](const char* why) { throw std::invalid_argument(std::string(op) + ": " + why); };
  if (p.heads_k <= 0 || p.heads % p.heads_k != 0) fail("heads % heads_k != 0");
  // 32-bit row arithmetic in the kernels: row + (Lk - Lq) + window bound (at most max(Lq, Lk))
  // stays below 2^31 for lengths up to 2^29.
  if (p.seqlen_q > (int64_t(1) << 29) || p.seqlen_k > (int64_t(1) << 29)) fail("sequences longer than 2^29");
  const int64_t longest = p.seqlen_q > p.seqlen_k ? p.seqlen_q : p.seqlen_k;
  if (p.window_left > longest || p.window_right > longest)
    fail("window bounds over max(seqlen_q, seqlen_k) (clamp them)");
  if (p.batch > 65535 || p.heads > 65535) fail("batch or heads over 65535 (grid z and y)");
}

void attention_fwd(const AttnFwdParams& p, void* stream) {
  if (!attention_fwd_supported(p.dtype, p.head_dim))
    throw std::invalid_argument("attention_fwd: unsupported dtype code or head dim");
  check_attention_problem(p, "attention_fwd");
  // The output tile is stored in 16-byte chunks.
  if (reinterpret_cast<std::uintptr_t>(p.out) % 16 != 0 || p.o_strides[0] % 8 || p.o_strides[1] % 8 ||
      p.o_strides[2] % 8)
    throw std::invalid_argument("attention_fwd: out rows not 16-byte aligned");
  if (p.seqlen_q == 0 || p.batch * p.heads == 0) return;
  if (p.dtype == static_cast<int>(DType::kFloat16))
    run_for_type<__half>(p, stream);
  else
    run_for_type<__nv_bfloat16>(p, stream);
}

}  // namespace fastattn::cuda
