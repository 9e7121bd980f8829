// Host launcher of the tensor-core FlashAttention-2 backward (flash_bwd*.cuh).
//
// Given the forward's inputs q (B, Hq, Lq, D), k/v (B, Hk, Lk, D), its output out and
// natural-log lse (B, Hq, Lq) float32 contiguous (+inf for a row that saw no key), and dout
// like out, writes dq like q and dk/dv like k/v (GQA/MQA: dk/dv summed over the Hq / Hk
// query heads that read each key/value head, inside the kernel, no expanded copies). The
// masks, softcap and ALiBi are the forward's (attention.h): the same fields.
// Tensors are taken by (batch, head, seq) element strides with the head dim contiguous;
// q/k/v/dout rows 16-byte aligned (cp.async), dq/dk/dv rows 4-byte aligned.
//
// Three or four launches (FlashAttention-2's scheme): a preprocess (delta = rowsum(dout *
// out), lse in log2 units, the dq accumulator zeroed); the dK/dV kernel over key blocks,
// which recomputes P and dS from lse and, unless deterministic, adds dS K into the fp32 dq
// accumulator with atomics; then either the dq conversion (accumulator * scale to dq's type)
// or, deterministic, a dq kernel over query blocks that recomputes dS and needs no atomics.
// `workspace` holds attention_bwd_workspace_floats(p) floats (contents irrelevant).
#pragma once

#include <cstdint>

#include "attention.h"

namespace fastattn::cuda {

// The forward's call (q, k, v, out, lse, their strides, sizes, masks, softcap, ALiBi: read, not
// written; lse (B, Hq, Lq) contiguous) and what the backward adds.
struct AttnBwdParams : AttnFwdParams {
  const void* dout = nullptr;  // like out
  void *dq = nullptr, *dk = nullptr, *dv = nullptr;
  float* workspace = nullptr;
  // (batch, head, seq) element strides of dout, dq, dk and dv.
  int64_t do_strides[3] = {}, dq_strides[3] = {}, dk_strides[3] = {}, dv_strides[3] = {};
  bool deterministic = false;

  // Set by the launcher, as the forward's derived fields (read by the kernels at each use).
  int64_t seqlen_q_pad = 0;         // Lq rounded up to the query block (workspace rows)
  float* lse_log2 = nullptr;        // workspace: (B, Hq, seqlen_q_pad) lse * log2(e), +inf padding
  float* delta = nullptr;           // workspace: (B, Hq, seqlen_q_pad) rowsum(dout * out), 0 padding
  float* dq_accum = nullptr;        // workspace: (B, Hq, seqlen_q_pad, kernel head dim), or null
  int64_t kernel_head_dim = 0;      // the next of 64, 128 and 256
  float softcap_exp2 = 0.0f;        // 2 log2(e) * softcap_inner: exp(2 x) of the softcap's tanh as exp2
  float softcap_neg2outer = 0.0f;   // -2 softcap_outer
  float ds_scale = 0.0f;            // scale of dS in dK and dQ: scale, times 4 with softcap (see prob_and_grad)
};

// Whether a (dtype, head dim) pair has compiled backward kernels (fp16/bf16, head dim a
// multiple of 8 up to 256).
bool attention_bwd_supported(int dtype, int64_t head_dim);

// The float32 workspace the launch needs (p's sizes, head_dim and deterministic set).
int64_t attention_bwd_workspace_floats(const AttnBwdParams& p);

// Runs the backward for p (throws std::invalid_argument for an unsupported call).
void attention_bwd(const AttnBwdParams& p, void* stream);

}  // namespace fastattn::cuda
