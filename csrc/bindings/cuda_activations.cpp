// pybind11 bindings of the fused activation launchers (csrc/cuda/activations). Tensors
// arrive as raw addresses (ints), element row strides, a dtype code and a stream handle;
// the Python op validated them.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/activations/activations.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* mptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
}  // namespace

void register_cuda_activations(py::module_& m) {
  m.def(
      "gated_act_fwd",
      [](int dtype, int activation, std::uintptr_t gate, std::uintptr_t up, std::uintptr_t out, int64_t rows,
         int64_t cols, int64_t gate_stride, int64_t up_stride, int64_t out_stride, std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::gated_act_fwd(dtype, activation, cptr(gate), cptr(up), mptr(out), rows, cols, gate_stride, up_stride,
                            out_stride, mptr(stream));
      },
      "out = act(gate) * up over (rows, cols) with row strides; activation code 0 swiglu, 1 geglu, 2 geglu_tanh",
      py::arg("dtype"), py::arg("activation"), py::arg("gate"), py::arg("up"), py::arg("out"), py::arg("rows"),
      py::arg("cols"), py::arg("gate_stride"), py::arg("up_stride"), py::arg("out_stride"), py::arg("stream"));
  m.def(
      "gated_act_bwd",
      [](int dtype, int activation, std::uintptr_t dout, std::uintptr_t gate, std::uintptr_t up,
         std::uintptr_t dgate, std::uintptr_t dup, int64_t rows, int64_t cols, int64_t dout_stride,
         int64_t gate_stride, int64_t up_stride, int64_t dgate_stride, int64_t dup_stride, std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::gated_act_bwd(dtype, activation, cptr(dout), cptr(gate), cptr(up), mptr(dgate), mptr(dup), rows, cols,
                            dout_stride, gate_stride, up_stride, dgate_stride, dup_stride, mptr(stream));
      },
      "dgate = dout * up * act'(gate), dup = dout * act(gate)", py::arg("dtype"), py::arg("activation"),
      py::arg("dout"), py::arg("gate"), py::arg("up"), py::arg("dgate"), py::arg("dup"), py::arg("rows"),
      py::arg("cols"), py::arg("dout_stride"), py::arg("gate_stride"), py::arg("up_stride"),
      py::arg("dgate_stride"), py::arg("dup_stride"), py::arg("stream"));
  m.def(
      "bias_gelu_fwd",
      [](int dtype, bool approximate_tanh, std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, int64_t rows,
         int64_t cols, int64_t x_stride, int64_t out_stride, std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::bias_gelu_fwd(dtype, approximate_tanh, cptr(x), cptr(bias), mptr(out), rows, cols, x_stride,
                            out_stride, mptr(stream));
      },
      "out = gelu(x + bias) over (rows, cols); bias (cols,)", py::arg("dtype"), py::arg("approximate_tanh"),
      py::arg("x"), py::arg("bias"), py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("x_stride"),
      py::arg("out_stride"), py::arg("stream"));
  m.def(
      "bias_gelu_bwd",
      [](int dtype, bool approximate_tanh, std::uintptr_t dout, std::uintptr_t x, std::uintptr_t bias,
         std::uintptr_t dx, int64_t rows, int64_t cols, int64_t dout_stride, int64_t x_stride, int64_t dx_stride,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        cuda::bias_gelu_bwd(dtype, approximate_tanh, cptr(dout), cptr(x), cptr(bias), mptr(dx), rows, cols,
                            dout_stride, x_stride, dx_stride, mptr(stream));
      },
      "dx = dout * gelu'(x + bias)", py::arg("dtype"), py::arg("approximate_tanh"), py::arg("dout"), py::arg("x"),
      py::arg("bias"), py::arg("dx"), py::arg("rows"), py::arg("cols"), py::arg("dout_stride"),
      py::arg("x_stride"), py::arg("dx_stride"), py::arg("stream"));
}

}  // namespace fastattn::bindings
