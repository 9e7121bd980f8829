// Element type codes shared by every native kernel and by Python
// (fastattn/_dtype_codes.py mirrors them; tests check the two agree).
#pragma once

#include <cstddef>

namespace fastattn {

enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

inline bool is_valid_dtype_code(int code) { return code >= 0 && code <= 2; }

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
