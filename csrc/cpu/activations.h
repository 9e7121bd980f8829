// Fused gated activations on the CPU: out = act(gate) * up, and its backward; fused
// bias + GELU, out = gelu(x + bias), and its backward.
//
// Each tensor is a 2-D view of `rows` rows of `cols` contiguous elements, with its own
// row stride (in elements). Inputs of any supported dtype are computed in float32.
// Outputs may alias inputs only exactly (same pointer and stride): every element is
// read before it is written. `num_threads` <= 0 means the OpenMP default; callers pass
// torch's intra-op thread count so that both libraries use the same number of cores.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace fastattn::cpu {

struct GatedActFwdArgs {
  const void* gate;
  const void* up;
  void* out;
  int64_t rows, cols;
  int64_t stride_gate, stride_up, stride_out;
  DType dtype;
  GatedActivation activation;
  int num_threads = 0;
};

struct GatedActBwdArgs {
  const void* dout;
  const void* gate;
  const void* up;
  void* dgate;
  void* dup;
  int64_t rows, cols;
  int64_t stride_dout, stride_gate, stride_up, stride_dgate, stride_dup;
  DType dtype;
  GatedActivation activation;
  int num_threads = 0;
};

// x, out: rows x cols as above; bias: cols elements `stride_bias` elements apart (one
// bias row broadcast over every row). `tanh`: torch's approximate="tanh", else exact erf.
struct BiasGeluFwdArgs {
  const void* x;
  const void* bias;
  void* out;
  int64_t rows, cols;
  int64_t stride_x, stride_bias, stride_out;
  DType dtype;
  bool tanh;
  int num_threads = 0;
};

struct BiasGeluBwdArgs {
  const void* dout;
  const void* x;
  const void* bias;
  void* dx;
  int64_t rows, cols;
  int64_t stride_dout, stride_x, stride_bias, stride_dx;
  DType dtype;
  bool tanh;
  int num_threads = 0;
};

// out = act(gate) * up.
void gated_act_fwd(const GatedActFwdArgs& args);

// dgate = dout * up * act'(gate), dup = dout * act(gate).
void gated_act_bwd(const GatedActBwdArgs& args);

// out = gelu(x + bias); the sum is formed in float32 (never rounded to the input dtype).
void bias_gelu_fwd(const BiasGeluFwdArgs& args);

// dx = dout * gelu'(x + bias). The bias gradient is dx summed over rows (left to the caller,
// which reduces in float32).
void bias_gelu_bwd(const BiasGeluBwdArgs& args);

}  // namespace fastattn::cpu
