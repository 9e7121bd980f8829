// fastattn._cuda_sim: the csrc/cuda kernels built for the host SIMT runtime, with the same
// functions (and the same raw-pointer signatures) as fastattn._cuda. Pointers are host
// addresses of CPU tensors; stream handles are accepted and ignored.
#include <pybind11/pybind11.h>

namespace fastattn::bindings {
void register_cuda_kernels(pybind11::module_& m);
}

PYBIND11_MODULE(_cuda_sim, m) {
  m.doc() = "fastattn CUDA C++ kernels run on the CPU by the host SIMT runtime (csrc/sim)";
  m.attr("simulated") = true;
  fastattn::bindings::register_cuda_kernels(m);
}
