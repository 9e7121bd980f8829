// fastattn._C: native CPU kernels. Takes raw pointers (ints), shapes, strides in elements
// and dtype codes (csrc/common/dtype.h); never links libtorch.
#include <pybind11/pybind11.h>

#include "bindings/cpu_registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastattn native CPU kernels (raw pointers, shapes, strides, dtype codes)";
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  fastattn::bindings::register_cpu_activations(m);
  fastattn::bindings::register_cpu_attention(m);
}
