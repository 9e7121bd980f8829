// Native CPU attention (FlashAttention scheme): the parameter record shared by the
// bindings, the run-time ISA dispatcher (attention.cpp) and the per-ISA kernels
// (attention_impl.h compiled by attention_avx512bf16.cpp / attention_avx512.cpp /
// attention_avx2.cpp).
//
// Tensors arrive as raw pointers with element strides; every logical tensor is 4-D
// (batch, heads, seq, dim) as in fastattn.attention_args. With varlen
// (cu_seqlens_q != nullptr) batch is 1 and seq packs num_seqs sequences.
// No validation happens here: the public Python op validated everything.
#pragma once

#include <cstdint>

namespace fastattn::cpu {

struct AttnTensor {
  const void* ptr = nullptr;
  int64_t sb = 0, sh = 0, sl = 0, sd = 0;  // element strides of (batch, head, seq, dim)
};

enum class AttnMaskKind : int { kNone = 0, kBool = 1, kFloat = 2 };

struct AttnParams {
  int dtype = 0;  // fastattn::DType code of q/k/v/out/dout/dq/dk/dv (one dtype for all)
  int64_t batch = 0, heads_q = 0, heads_k = 0, seqlen_q = 0, seqlen_k = 0;
  int64_t head_dim = 0, head_dim_v = 0;

  AttnTensor q, k, v;
  AttnTensor out;          // forward: written; backward: read (for rowsum(dout * out))
  float* lse = nullptr;    // (batch, heads_q, seqlen_q) fp32; forward writes, backward reads
  int64_t lse_sb = 0, lse_sh = 0, lse_sl = 0;

  // Backward only.
  AttnTensor dout, dq, dk, dv;

  // Optional extras.
  AttnMaskKind mask_kind = AttnMaskKind::kNone;
  int mask_dtype = 0;      // dtype code of a float mask; a bool mask is one byte per element
  AttnTensor mask;         // (batch, heads_q, seqlen_q, seqlen_k), stride 0 where broadcast
  const float* alibi = nullptr;  // slopes, indexed [b * alibi_sb + h * alibi_sh]
  int64_t alibi_sb = 0, alibi_sh = 0;
  const int64_t* cu_seqlens_q = nullptr;  // varlen: (num_seqs + 1) offsets, batch == 1
  const int64_t* cu_seqlens_k = nullptr;
  int64_t num_seqs = 0;
  // decode_fwd only: keys of each batch element (cache rows 0 .. kv_lens[b] - 1 are valid).
  const int64_t* kv_lens = nullptr;

  float scale = 1.0f;
  float softcap = 0.0f;    // 0 = off
  // Attention dropout (0 = off): probability (b, h, i, j) is kept iff the Philox4x32-10
  // uniform of counter rng_offset + ((b * heads_q + h) * drop_lq + i) * drop_lk + j under
  // key `seed` is >= dropout_p (fastattn/philox.py is the specification; b counts
  // sequences with varlen, i and j are positions within the sequence), then scaled by
  // 1 / (1 - dropout_p). drop_lq/drop_lk: the counter space's dims (max lengths).
  float dropout_p = 0.0f;
  uint64_t seed = 0;
  int64_t rng_offset = 0, drop_lq = 0, drop_lk = 0;
  bool causal = false;
  bool bottom_right = false;
  int64_t window_left = -1, window_right = -1;  // -1 = unbounded
  bool deterministic = false;
  int num_threads = 1;
};

// The instruction set the dispatcher runs on this CPU: "avx512bf16", "avx512", "avx2"
// or "none" (then the kernels are unavailable and Python falls back to the reference).
const char* attention_isa();

// Restrict the dispatcher to a lower instruction set than the CPU's best ("avx2",
// "avx512", "avx512bf16"; "auto" or "" restores the best), so that every code path can be
// tested on one machine. Returns false (and changes nothing) when this CPU lacks it.
// Not thread-safe against concurrent kernel calls: meant for tests.
bool attention_use_isa(const char* name);

// Forward: writes out and lse. Backward: writes dq, dk, dv (dk/dv summed over the
// query heads of each key/value head for GQA).
void attention_fwd(const AttnParams& p);
void attention_bwd(const AttnParams& p);

// Decoding against a KV cache (decode_impl.h): q (batch, heads_q, seqlen_q, head_dim) with
// a few rows, k/v the caches seen as (batch, heads_k, seqlen_k, dim) with unit dim stride,
// batch element b attending to its first kv_lens[b] keys, causal/window aligned
// bottom-right (as flash-attn's KV-cache decoding), softcap and ALiBi honoured (no mask,
// no varlen). Writes out and lse as attention_fwd does.
void decode_fwd(const AttnParams& p);

// Per-ISA entry points (one namespace per instruction set so that no symbol is shared
// between translation units compiled for different targets).
namespace avx512bf16 {
void attention_fwd(const AttnParams& p);
void attention_bwd(const AttnParams& p);
}  // namespace avx512bf16
namespace avx512 {
void attention_fwd(const AttnParams& p);
void attention_bwd(const AttnParams& p);
void decode_fwd(const AttnParams& p);
}  // namespace avx512
namespace avx2 {
void attention_fwd(const AttnParams& p);
void attention_bwd(const AttnParams& p);
void decode_fwd(const AttnParams& p);
}  // namespace avx2

}  // namespace fastattn::cpu
