// Dispatch of the attention forward to its instantiations (inst/*.cu, one per dtype, head
// dim and causal flag; generate_instantiations.py writes them).
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
template <typename T>
void run_for_type(const AttnFwdParams& p, void* stream) {
  switch (p.head_dim) {
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
  return type_ok && (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

void attention_fwd(const AttnFwdParams& p, void* stream) {
  if (!attention_fwd_supported(p.dtype, p.head_dim))
    throw std::invalid_argument("attention_fwd: unsupported dtype code or head dim");
  if (p.heads_k <= 0 || p.heads % p.heads_k != 0) throw std::invalid_argument("attention_fwd: heads % heads_k != 0");
  if (p.seqlen_q > 0x3fffffff || p.seqlen_k > 0x3fffffff)
    throw std::invalid_argument("attention_fwd: sequences longer than 2^30");
  if (p.batch * p.heads > 65535) throw std::invalid_argument("attention_fwd: batch * heads over 65535 (grid y)");
  if (p.seqlen_q == 0 || p.batch * p.heads == 0) return;
  if (p.dtype == static_cast<int>(DType::kFloat16))
    run_for_type<__half>(p, stream);
  else
    run_for_type<__nv_bfloat16>(p, stream);
}

}  // namespace fastattn::cuda
