// Bindings of the fused gated activations and bias-GELU (csrc/cpu/activations.h). Each takes one
// dict of named values (csrc/bindings/spec.h), whose keys are the fields of the kernel's
// argument struct: addresses as ints (data_ptr()), row strides in elements, "dtype" and
// "activation" as the codes of csrc/common/dtype.h, "tanh" a bool, "num_threads" <= 0 (or
// absent) for the OpenMP default.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bindings/cpu_registry.h"
#include "bindings/spec.h"
#include "cpu/activations.h"

namespace py = pybind11;

namespace fastattn::bindings {
namespace {

// The element type and (for the gated kernels) activation codes, checked before any kernel
// runs: an unknown code would select no instantiation.
DType read_dtype(const py::dict& d) {
  const int code = spec::get<int>(d, "dtype", -1);
  if (!is_valid_dtype_code(code)) throw std::invalid_argument("invalid dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

GatedActivation read_activation(const py::dict& d) {
  const int code = spec::get<int>(d, "activation", -1);
  if (!is_valid_activation_code(code))
    throw std::invalid_argument("invalid activation code " + std::to_string(code));
  return static_cast<GatedActivation>(code);
}

// Every address a call with elements to touch must carry.
void require(bool present, const char* what) {
  if (!present) throw std::invalid_argument(std::string("missing address: ") + what);
}

// The kernel called with the struct, the GIL released.
template <class Args, void (*Kernel)(const Args&)>
void run(const Args& a) {
  py::gil_scoped_release release;
  Kernel(a);
}

}  // namespace

void register_cpu_activations(py::module_& m) {
  m.def(
      "gated_act_fwd",
      [](const py::dict& d) {
        cpu::GatedActFwdArgs a{};
        spec::read_fields(d, "gate", a.gate, "up", a.up, "out", a.out, "rows", a.rows, "cols", a.cols,
                          "stride_gate", a.stride_gate, "stride_up", a.stride_up, "stride_out", a.stride_out,
                          "num_threads", a.num_threads);
        a.dtype = read_dtype(d), a.activation = read_activation(d);
        if (a.rows > 0 && a.cols > 0) require(a.gate && a.up && a.out, "gate, up and out");
        run<cpu::GatedActFwdArgs, cpu::gated_act_fwd>(a);
      },
      py::arg("spec"),
      "out[r, c] = act(gate[r, c]) * up[r, c] over rows x cols elements (row strides in "
      "elements, inner stride 1), computed in float32. out may alias gate or up exactly.");
  m.def(
      "gated_act_bwd",
      [](const py::dict& d) {
        cpu::GatedActBwdArgs a{};
        spec::read_fields(d, "dout", a.dout, "gate", a.gate, "up", a.up, "dgate", a.dgate, "dup", a.dup,
                          "rows", a.rows, "cols", a.cols, "stride_dout", a.stride_dout, "stride_gate",
                          a.stride_gate, "stride_up", a.stride_up, "stride_dgate", a.stride_dgate, "stride_dup",
                          a.stride_dup, "num_threads", a.num_threads);
        a.dtype = read_dtype(d), a.activation = read_activation(d);
        if (a.rows > 0 && a.cols > 0) require(a.dout && a.gate && a.up && a.dgate && a.dup, "dout, gate, up, dgate and dup");
        run<cpu::GatedActBwdArgs, cpu::gated_act_bwd>(a);
      },
      py::arg("spec"),
      "dgate = dout * up * act'(gate), dup = dout * act(gate) (layout as gated_act_fwd). "
      "dgate/dup may alias gate/up exactly.");
  m.def(
      "bias_gelu_fwd",
      [](const py::dict& d) {
        cpu::BiasGeluFwdArgs a{};
        spec::read_fields(d, "x", a.x, "bias", a.bias, "out", a.out, "rows", a.rows, "cols", a.cols, "stride_x",
                          a.stride_x, "stride_bias", a.stride_bias, "stride_out", a.stride_out, "tanh", a.tanh,
                          "num_threads", a.num_threads);
        a.dtype = read_dtype(d);
        if (a.rows > 0 && a.cols > 0) require(a.x && a.bias && a.out, "x, bias and out");
        run<cpu::BiasGeluFwdArgs, cpu::bias_gelu_fwd>(a);
      },
      py::arg("spec"),
      "out[r, c] = gelu(x[r, c] + bias[c]) (tanh: torch's approximate='tanh', else erf) over "
      "rows x cols elements; row strides of x/out and the element stride of bias in elements; "
      "computed in float32. out may alias x exactly.");
  m.def(
      "bias_gelu_bwd",
      [](const py::dict& d) {
        cpu::BiasGeluBwdArgs a{};
        spec::read_fields(d, "dout", a.dout, "x", a.x, "bias", a.bias, "dx", a.dx, "rows", a.rows, "cols", a.cols,
                          "stride_dout", a.stride_dout, "stride_x", a.stride_x, "stride_bias", a.stride_bias,
                          "stride_dx", a.stride_dx, "tanh", a.tanh, "num_threads", a.num_threads);
        a.dtype = read_dtype(d);
        if (a.rows > 0 && a.cols > 0) require(a.dout && a.x && a.bias && a.dx, "dout, x, bias and dx");
        run<cpu::BiasGeluBwdArgs, cpu::bias_gelu_bwd>(a);
      },
      py::arg("spec"),
      "dx = dout * gelu'(x + bias) (layout as bias_gelu_fwd); dx may alias dout or x exactly.");
}

}  // namespace fastattn::bindings
