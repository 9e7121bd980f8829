// Host-side layout of the attention backward's workspace and the derived fields of its
// parameters, header-only: attention_bwd.cu uses them before dispatching, and a caller that
// launches one instantiation directly (the simulator's planted-bug driver) can too.
#pragma once

#include <cstdint>

#include "attention_bwd.h"

namespace fastattn::cuda::attn {

// The workspace's row padding: the dq kernel's query block (AttnBwdDqTraits::kBlockM), a
// multiple of the dK/dV kernel's (AttnBwdTraits::kBlockM, 64 or 32).
constexpr int64_t kBwdRowBlock = 64;

// The kernels' head dim for a call's: the next of 64, 128 and 256 (zero-filled in shared memory).
inline int64_t bwd_kernel_head_dim(int64_t head_dim) { return head_dim <= 64 ? 64 : (head_dim <= 128 ? 128 : 256); }

inline int64_t bwd_padded_rows(int64_t seqlen_q) { return (seqlen_q + kBwdRowBlock - 1) / kBwdRowBlock * kBwdRowBlock; }

// Workspace floats: lse_log2 and delta (B, Hq, padded Lq), then the dq accumulator (B, Hq,
// padded Lq, kernel head dim) unless deterministic.
inline int64_t bwd_workspace_floats(const AttnBwdParams& p) {
  const int64_t rows = p.batch * p.heads * bwd_padded_rows(p.seqlen_q);
  return 2 * rows + (p.deterministic ? 0 : rows * bwd_kernel_head_dim(p.head_dim));
}

// p with the fields the kernels read instead of recomputing (see AttnBwdParams) and the
// workspace split into its parts.
inline AttnBwdParams prepare_bwd_params(const AttnBwdParams& params) {
  AttnBwdParams p = params;
  set_derived_fields(p);
  p.softcap_exp2 = 2.0f * kLog2e * p.softcap_inner;
  p.softcap_neg2outer = -2.0f * p.softcap_outer;
  p.ds_scale = p.softcap_outer > 0.0f ? 4.0f * p.scale : p.scale;  // the kernels' softcap condition
  p.kernel_head_dim = bwd_kernel_head_dim(p.head_dim);
  p.seqlen_q_pad = bwd_padded_rows(p.seqlen_q);
  const int64_t rows = p.batch * p.heads * p.seqlen_q_pad;
  p.lse_log2 = p.workspace;
  p.delta = p.workspace + rows;
  p.dq_accum = p.deterministic ? nullptr : p.workspace + 2 * rows;
  return p;
}

}  // namespace fastattn::cuda::attn
