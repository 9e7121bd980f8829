// Bindings of the fused gated activations and bias-GELU (csrc/cpu/activations.h).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "bindings/cpu_registry.h"
#include "cpu/activations.h"

namespace py = pybind11;

namespace fastattn::bindings {
namespace {

DType to_dtype(int code) {
  if (!is_valid_dtype_code(code)) throw std::invalid_argument("invalid dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

GatedActivation to_activation(int code) {
  if (!is_valid_activation_code(code))
    throw std::invalid_argument("invalid activation code " + std::to_string(code));
  return static_cast<GatedActivation>(code);
}

template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace

void register_cpu_activations(py::module_& m) {
  m.def(
      "gated_act_fwd",
      [](std::uintptr_t gate, std::uintptr_t up, std::uintptr_t out, int64_t rows, int64_t cols,
         int64_t stride_gate, int64_t stride_up, int64_t stride_out, int dtype_code,
         int activation_code, int num_threads) {
        cpu::GatedActFwdArgs a{ptr<const void>(gate), ptr<const void>(up), ptr<void>(out),
                               rows, cols, stride_gate, stride_up, stride_out,
                               to_dtype(dtype_code), to_activation(activation_code), num_threads};
        py::gil_scoped_release release;
        cpu::gated_act_fwd(a);
      },
      py::arg("gate_ptr"), py::arg("up_ptr"), py::arg("out_ptr"), py::arg("rows"), py::arg("cols"),
      py::arg("stride_gate"), py::arg("stride_up"), py::arg("stride_out"), py::arg("dtype_code"),
      py::arg("activation_code"), py::arg("num_threads") = 0,
      "out[r, c] = act(gate[r, c]) * up[r, c] over rows x cols elements (row strides in "
      "elements, inner stride 1), computed in float32. out may alias gate or up exactly. "
      "num_threads <= 0: the OpenMP default.");
  m.def(
      "gated_act_bwd",
      [](std::uintptr_t dout, std::uintptr_t gate, std::uintptr_t up, std::uintptr_t dgate,
         std::uintptr_t dup, int64_t rows, int64_t cols, int64_t stride_dout,
         int64_t stride_gate, int64_t stride_up, int64_t stride_dgate, int64_t stride_dup,
         int dtype_code, int activation_code, int num_threads) {
        cpu::GatedActBwdArgs a{ptr<const void>(dout), ptr<const void>(gate), ptr<const void>(up),
                               ptr<void>(dgate), ptr<void>(dup), rows, cols, stride_dout,
                               stride_gate, stride_up, stride_dgate, stride_dup,
                               to_dtype(dtype_code), to_activation(activation_code), num_threads};
        py::gil_scoped_release release;
        cpu::gated_act_bwd(a);
      },
      py::arg("dout_ptr"), py::arg("gate_ptr"), py::arg("up_ptr"), py::arg("dgate_ptr"),
      py::arg("dup_ptr"), py::arg("rows"), py::arg("cols"), py::arg("stride_dout"),
      py::arg("stride_gate"), py::arg("stride_up"), py::arg("stride_dgate"),
      py::arg("stride_dup"), py::arg("dtype_code"), py::arg("activation_code"),
      py::arg("num_threads") = 0,
      "dgate = dout * up * act'(gate), dup = dout * act(gate) (layout as gated_act_fwd). "
      "dgate/dup may alias gate/up exactly.");
  m.def(
      "bias_gelu_fwd",
      [](std::uintptr_t x, std::uintptr_t bias, std::uintptr_t out, int64_t rows, int64_t cols,
         int64_t stride_x, int64_t stride_bias, int64_t stride_out, int dtype_code, bool tanh,
         int num_threads) {
        cpu::BiasGeluFwdArgs a{ptr<const void>(x), ptr<const void>(bias), ptr<void>(out), rows,
                               cols, stride_x, stride_bias, stride_out, to_dtype(dtype_code), tanh,
                               num_threads};
        py::gil_scoped_release release;
        cpu::bias_gelu_fwd(a);
      },
      py::arg("x_ptr"), py::arg("bias_ptr"), py::arg("out_ptr"), py::arg("rows"), py::arg("cols"),
      py::arg("stride_x"), py::arg("stride_bias"), py::arg("stride_out"), py::arg("dtype_code"),
      py::arg("tanh"), py::arg("num_threads") = 0,
      "out[r, c] = gelu(x[r, c] + bias[c]) (tanh: torch's approximate='tanh', else erf) over "
      "rows x cols elements; row strides of x/out and the element stride of bias in elements; "
      "computed in float32. out may alias x exactly.");
  m.def(
      "bias_gelu_bwd",
      [](std::uintptr_t dout, std::uintptr_t x, std::uintptr_t bias, std::uintptr_t dx,
         int64_t rows, int64_t cols, int64_t stride_dout, int64_t stride_x, int64_t stride_bias,
         int64_t stride_dx, int dtype_code, bool tanh, int num_threads) {
        cpu::BiasGeluBwdArgs a{ptr<const void>(dout), ptr<const void>(x), ptr<const void>(bias),
                               ptr<void>(dx), rows, cols, stride_dout, stride_x, stride_bias,
                               stride_dx, to_dtype(dtype_code), tanh, num_threads};
        py::gil_scoped_release release;
        cpu::bias_gelu_bwd(a);
      },
      py::arg("dout_ptr"), py::arg("x_ptr"), py::arg("bias_ptr"), py::arg("dx_ptr"),
      py::arg("rows"), py::arg("cols"), py::arg("stride_dout"), py::arg("stride_x"),
      py::arg("stride_bias"), py::arg("stride_dx"), py::arg("dtype_code"), py::arg("tanh"),
      py::arg("num_threads") = 0,
      "dx = dout * gelu'(x + bias) (layout as bias_gelu_fwd); dx may alias dout or x exactly.");
}

}  // namespace fastattn::bindings
