// Bindings of the fused gated activations (csrc/cpu/activations.h).
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
         int activation_code) {
        cpu::GatedActFwdArgs a{ptr<const void>(gate), ptr<const void>(up), ptr<void>(out),
                               rows, cols, stride_gate, stride_up, stride_out,
                               to_dtype(dtype_code), to_activation(activation_code)};
        py::gil_scoped_release release;
        cpu::gated_act_fwd(a);
      },
      py::arg("gate_ptr"), py::arg("up_ptr"), py::arg("out_ptr"), py::arg("rows"), py::arg("cols"),
      py::arg("stride_gate"), py::arg("stride_up"), py::arg("stride_out"), py::arg("dtype_code"),
      py::arg("activation_code"),
      "out[r, c] = act(gate[r, c]) * up[r, c] over rows x cols elements (row strides in "
      "elements, inner stride 1), computed in float32.");
  m.def(
      "gated_act_bwd",
      [](std::uintptr_t dout, std::uintptr_t gate, std::uintptr_t up, std::uintptr_t dgate,
         std::uintptr_t dup, int64_t rows, int64_t cols, int64_t stride_dout,
         int64_t stride_gate, int64_t stride_up, int64_t stride_dgate, int64_t stride_dup,
         int dtype_code, int activation_code) {
        cpu::GatedActBwdArgs a{ptr<const void>(dout), ptr<const void>(gate), ptr<const void>(up),
                               ptr<void>(dgate), ptr<void>(dup), rows, cols, stride_dout,
                               stride_gate, stride_up, stride_dgate, stride_dup,
                               to_dtype(dtype_code), to_activation(activation_code)};
        py::gil_scoped_release release;
        cpu::gated_act_bwd(a);
      },
      py::arg("dout_ptr"), py::arg("gate_ptr"), py::arg("up_ptr"), py::arg("dgate_ptr"),
      py::arg("dup_ptr"), py::arg("rows"), py::arg("cols"), py::arg("stride_dout"),
      py::arg("stride_gate"), py::arg("stride_up"), py::arg("stride_dgate"),
      py::arg("stride_dup"), py::arg("dtype_code"), py::arg("activation_code"),
      "dgate = dout * up * act'(gate), dup = dout * act(gate) (layout as gated_act_fwd). "
      "dgate/dup may alias gate/up exactly.");
}

}  // namespace fastattn::bindings
