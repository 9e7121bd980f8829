// pybind11 bindings of the scale-mask-softmax launchers (csrc/cuda/softmax). 4-D tensors
// arrive as raw addresses and (b, h, q, k) element strides; the Python op validated them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "../cuda/softmax/softmax.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using S4 = std::array<int64_t, 4>;
cuda::Strides4 strides4(const S4& s) { return {s[0], s[1], s[2], s[3]}; }
}  // namespace

void register_cuda_softmax(py::module_& m) {
  m.def(
      "scaled_masked_softmax_fwd",
      [](int dtype, std::uintptr_t x, S4 x_strides, std::uintptr_t y, S4 y_strides, std::uintptr_t mask,
         int mask_kind, S4 mask_strides, int64_t batch, int64_t heads, int64_t seqlen_q, int64_t seqlen_k,
         float scale, bool causal, std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::scaled_masked_softmax_fwd(dtype, reinterpret_cast<const void*>(x), strides4(x_strides),
                                        reinterpret_cast<void*>(y), strides4(y_strides),
                                        reinterpret_cast<const void*>(mask), mask_kind, strides4(mask_strides),
                                        batch, heads, seqlen_q, seqlen_k, scale, causal,
                                        reinterpret_cast<void*>(stream));
      },
      "y = softmax(scale * x [+ mask], masked) over the last dim of (B, H, Lq, Lk); mask_kind 0 none, "
      "1 bool (nonzero = masked out), 2/3/4 additive fp32/fp16/bf16",
      py::arg("dtype"), py::arg("x"), py::arg("x_strides"), py::arg("y"), py::arg("y_strides"), py::arg("mask"),
      py::arg("mask_kind"), py::arg("mask_strides"), py::arg("batch"), py::arg("heads"), py::arg("seqlen_q"),
      py::arg("seqlen_k"), py::arg("scale"), py::arg("causal"), py::arg("stream"));
  m.def(
      "scaled_masked_softmax_bwd",
      [](int dtype, std::uintptr_t dy, S4 dy_strides, std::uintptr_t y, S4 y_strides, std::uintptr_t dx,
         S4 dx_strides, int64_t batch, int64_t heads, int64_t seqlen_q, int64_t seqlen_k, float scale,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::scaled_masked_softmax_bwd(dtype, reinterpret_cast<const void*>(dy), strides4(dy_strides),
                                        reinterpret_cast<const void*>(y), strides4(y_strides),
                                        reinterpret_cast<void*>(dx), strides4(dx_strides), batch, heads, seqlen_q,
                                        seqlen_k, scale, reinterpret_cast<void*>(stream));
      },
      "dx = scale * y * (dy - sum(dy * y)) over the last dim of (B, H, Lq, Lk)", py::arg("dtype"), py::arg("dy"),
      py::arg("dy_strides"), py::arg("y"), py::arg("y_strides"), py::arg("dx"), py::arg("dx_strides"),
      py::arg("batch"), py::arg("heads"), py::arg("seqlen_q"), py::arg("seqlen_k"), py::arg("scale"),
      py::arg("stream"));
  m.attr("softmax_max_row") = cuda::kSoftmaxMaxRow;
}

}  // namespace fastattn::bindings
