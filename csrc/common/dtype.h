// The integer codes every native kernel and Python share: element types and gated
// activations (fastattn/_dtype_codes.py mirrors them as DTYPE_CODES and ACTIVATION_CODES;
// tests check the two agree by running the kernels with them).
#pragma once

#include <cstddef>

namespace fastattn {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// Gated activations of the feed-forward kernels (CPU and CUDA):
//   swiglu:     silu(gate) * up
//   geglu:      gelu(gate) * up, exact erf GELU (torch approximate="none")
//   geglu_tanh: gelu(gate) * up, tanh GELU (torch approximate="tanh")
enum class GatedActivation : int {
  kSwiGLU = 0,
  kGeGLU = 1,
  kGeGLUTanh = 2,
};

inline bool is_valid_dtype_code(int code) { return code >= 0 && code <= 2; }
inline bool is_valid_activation_code(int code) { return code >= 0 && code <= 2; }

inline std::size_t dtype_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "invalid";
}

}  // namespace fastattn
