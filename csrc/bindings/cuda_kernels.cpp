// Registers every kernel family of csrc/cuda with a pybind11 module. Called once by
// fastattn._cuda's module file and once by fastattn._cuda_sim's, so the two expose
// identical functions.
#include <pybind11/pybind11.h>

namespace fastattn::bindings {

void register_cuda_activations(pybind11::module_& m);
void register_cuda_softmax(pybind11::module_& m);
void register_cuda_decode(pybind11::module_& m);
void register_cuda_attention(pybind11::module_& m);

void register_cuda_kernels(pybind11::module_& m) {
  register_cuda_activations(m);
  register_cuda_softmax(m);
  register_cuda_decode(m);
  register_cuda_attention(m);
}

}  // namespace fastattn::bindings
