// Dispatch of the attention backward to its instantiations (inst/bwd_*.cu, one per dtype and
// kernel head dim; generate_instantiations.py writes them) and the checks that precede it.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../../common/dtype.h"
#include "attention_bwd.h"
#include "bwd_params.h"
#include "flash_bwd.cuh"

// Compiled in inst/bwd_*.cu.
FA_ATTN_BWD_EXTERN(__half, 64)
FA_ATTN_BWD_EXTERN(__half, 128)
FA_ATTN_BWD_EXTERN(__nv_bfloat16, 64)
FA_ATTN_BWD_EXTERN(__nv_bfloat16, 128)
FA_ATTN_BWD_EXTERN(__half, 256)
FA_ATTN_BWD_EXTERN(__nv_bfloat16, 256)

namespace fastattn::cuda {

namespace {
void check_rows_aligned(const void* ptr, const int64_t (&strides)[3], int elems, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % (2 * elems) != 0 || strides[0] % elems || strides[1] % elems ||
      strides[2] % elems)
    throw std::invalid_argument(std::string("attention_bwd: ") + what + " rows not " + std::to_string(2 * elems) +
                                "-byte aligned");
}
}  // namespace

bool attention_bwd_supported(int dtype, int64_t head_dim) {
  const bool type_ok = dtype == static_cast<int>(DType::kFloat16) || dtype == static_cast<int>(DType::kBFloat16);
  return type_ok && head_dim >= 8 && head_dim <= 256 && head_dim % 8 == 0;
}

int64_t attention_bwd_workspace_floats(const AttnBwdParams& p) { return attn::bwd_workspace_floats(p); }

void attention_bwd(const AttnBwdParams& params, void* stream) {
  if (!attention_bwd_supported(params.dtype, params.head_dim))
    throw std::invalid_argument("attention_bwd: unsupported dtype code or head dim");
  check_attention_problem(params, "attention_bwd");
  check_rows_aligned(params.q, params.q_strides, 8, "q");
  check_rows_aligned(params.k, params.k_strides, 8, "k");
  check_rows_aligned(params.v, params.v_strides, 8, "v");
  check_rows_aligned(params.dout, params.do_strides, 8, "dout");
  check_rows_aligned(params.dq, params.dq_strides, 2, "dq");
  check_rows_aligned(params.dk, params.dk_strides, 2, "dk");
  check_rows_aligned(params.dv, params.dv_strides, 2, "dv");
  if (params.workspace == nullptr || reinterpret_cast<std::uintptr_t>(params.workspace) % 16 != 0)
    throw std::invalid_argument("attention_bwd: workspace missing or not 16-byte aligned");
  if (params.batch * params.heads == 0) return;

  const AttnBwdParams p = attn::prepare_bwd_params(params);
  const bool fp16 = p.dtype == static_cast<int>(DType::kFloat16);
  if (p.kernel_head_dim == 64)
    fp16 ? attn::run_flash_bwd<__half, 64>(p, stream) : attn::run_flash_bwd<__nv_bfloat16, 64>(p, stream);
  else if (p.kernel_head_dim == 128)
    fp16 ? attn::run_flash_bwd<__half, 128>(p, stream) : attn::run_flash_bwd<__nv_bfloat16, 128>(p, stream);
  else
    fp16 ? attn::run_flash_bwd<__half, 256>(p, stream) : attn::run_flash_bwd<__nv_bfloat16, 256>(p, stream);
}

}  // namespace fastattn::cuda
