// pybind11 bindings of the fused activation launchers (csrc/cuda/activations). Each takes one
// parameter dict (csrc/bindings/spec.h; built by fastattn/backends/cuda/kernels.py): (rows,
// cols) tensors as (data_ptr, row_stride) in elements with unit column stride, bias as a
// data_ptr, dtype and activation codes (csrc/common/dtype.h), rows, cols and stream; the
// Python op validated them.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/activations/activations.h"
#include "spec.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using spec::get;

// A (rows, cols) tensor: its address and row stride.
struct Rows {
  void* ptr;
  int64_t stride;
};
Rows rows_arg(const py::dict& d, const char* key) {
  int64_t s[1];
  const void* ptr = spec::tensor(d, key, s);
  return {const_cast<void*>(ptr), s[0]};
}

// The fields every launcher takes besides its tensors.
struct Common {
  int dtype;
  int64_t rows, cols;
  void* stream;
  explicit Common(const py::dict& d)
      : dtype(get<int>(d, "dtype", 0)),
        rows(get<int64_t>(d, "rows", 0)),
        cols(get<int64_t>(d, "cols", 0)),
        stream(spec::address<void>(d, "stream")) {}
};
}  // namespace

void register_cuda_activations(py::module_& m) {
  m.def(
      "gated_act_fwd",
      [](const py::dict& d) {
        const Common c(d);
        const int act = get<int>(d, "activation", 0);
        const Rows gate = rows_arg(d, "gate"), up = rows_arg(d, "up"), out = rows_arg(d, "out");
        py::gil_scoped_release release;
        cuda::gated_act_fwd(c.dtype, act, gate.ptr, up.ptr, out.ptr, c.rows, c.cols, gate.stride, up.stride,
                            out.stride, c.stream);
      },
      "out = act(gate) * up over (rows, cols), from one dict (dtype, activation: 0 swiglu, 1 geglu, 2 geglu_tanh; "
      "gate, up, out; rows, cols, stream)",
      py::arg("spec"));
  m.def(
      "gated_act_bwd",
      [](const py::dict& d) {
        const Common c(d);
        const int act = get<int>(d, "activation", 0);
        const Rows dout = rows_arg(d, "dout"), gate = rows_arg(d, "gate"), up = rows_arg(d, "up");
        const Rows dgate = rows_arg(d, "dgate"), dup = rows_arg(d, "dup");
        py::gil_scoped_release release;
        cuda::gated_act_bwd(c.dtype, act, dout.ptr, gate.ptr, up.ptr, dgate.ptr, dup.ptr, c.rows, c.cols,
                            dout.stride, gate.stride, up.stride, dgate.stride, dup.stride, c.stream);
      },
      "dgate = dout * up * act'(gate), dup = dout * act(gate), from one dict (gated_act_fwd's fields with dout, "
      "gate, up, dgate, dup)",
      py::arg("spec"));
  m.def(
      "bias_gelu_fwd",
      [](const py::dict& d) {
        const Common c(d);
        const bool tanh = get<bool>(d, "approximate_tanh", false);
        const Rows x = rows_arg(d, "x"), out = rows_arg(d, "out");
        const void* bias = spec::address<const void>(d, "bias");
        py::gil_scoped_release release;
        cuda::bias_gelu_fwd(c.dtype, tanh, x.ptr, bias, out.ptr, c.rows, c.cols, x.stride, out.stride, c.stream);
      },
      "out = gelu(x + bias) over (rows, cols), bias (cols,), from one dict (dtype, approximate_tanh, x, bias, out, "
      "rows, cols, stream)",
      py::arg("spec"));
  m.def(
      "bias_gelu_bwd",
      [](const py::dict& d) {
        const Common c(d);
        const bool tanh = get<bool>(d, "approximate_tanh", false);
        const Rows dout = rows_arg(d, "dout"), x = rows_arg(d, "x"), dx = rows_arg(d, "dx");
        const void* bias = spec::address<const void>(d, "bias");
        py::gil_scoped_release release;
        cuda::bias_gelu_bwd(c.dtype, tanh, dout.ptr, x.ptr, bias, dx.ptr, c.rows, c.cols, dout.stride, x.stride,
                            dx.stride, c.stream);
      },
      "dx = dout * gelu'(x + bias), from one dict (bias_gelu_fwd's fields with dout, x, bias, dx)", py::arg("spec"));
}

}  // namespace fastattn::bindings
