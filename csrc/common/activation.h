// Gated activation codes shared by the CPU and CUDA feed-forward kernels
// (mirrored in fastattn/_dtype_codes.py as ACTIVATION_CODES).
//   swiglu:     silu(gate) * up
//   geglu:      gelu(gate) * up, exact erf GELU (torch approximate="none")
//   geglu_tanh: gelu(gate) * up, tanh GELU (torch approximate="tanh")
#pragma once

namespace fastattn {

enum class GatedActivation : int {
  kSwiGLU = 0,
  kGeGLU = 1,
  kGeGLUTanh = 2,
};

inline bool is_valid_activation_code(int code) { return code >= 0 && code <= 2; }

}  // namespace fastattn
