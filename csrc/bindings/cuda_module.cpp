// fastattn._cuda: CUDA kernels. Takes raw device pointers (ints), shapes, strides, dtype
// codes and a stream handle; links the CUDA runtime statically and never libtorch, so it
// imports on machines with no GPU or driver.
#include <pybind11/pybind11.h>

#include "bindings/cuda_registry.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastattn CUDA kernels (raw device pointers, shapes, strides, dtype codes, stream)";
  fastattn::bindings::register_cuda_info(m);
  fastattn::bindings::register_cuda_kernels(m);
}
