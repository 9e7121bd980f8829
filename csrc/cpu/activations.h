// Fused gated activations on the CPU: out = act(gate) * up, and its backward.
//
// Each tensor is a 2-D view of `rows` rows of `cols` contiguous elements, with its own
// row stride (in elements). Inputs of any supported dtype are computed in float32.
// Outputs may alias inputs only exactly (same pointer and stride): every element is
// read before it is written.
#pragma once

#include <cstdint>

#include "common/activation.h"
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
};

// out = act(gate) * up.
void gated_act_fwd(const GatedActFwdArgs& args);

// dgate = dout * up * act'(gate), dup = dout * act(gate).
void gated_act_bwd(const GatedActBwdArgs& args);

}  // namespace fastattn::cpu
