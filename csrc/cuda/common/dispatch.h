// Host-side dispatch from the dtype codes of csrc/common/dtype.h to element types.
#pragma once

#include <stdexcept>
#include <string>

#include "../../common/dtype.h"
#include "platform.cuh"

namespace fastattn::cuda {

// Calls f(T{}) with T = float, __half or __nv_bfloat16 for dtype code 0, 1 or 2.
template <typename F>
void dispatch_dtype(int code, F&& f) {
  switch (static_cast<DType>(code)) {
    case DType::kFloat32: f(float{}); return;
    case DType::kFloat16: f(__half{}); return;
    case DType::kBFloat16: f(__nv_bfloat16{}); return;
  }
  throw std::invalid_argument("fastattn cuda: unknown dtype code " + std::to_string(code));
}

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace fastattn::cuda
