// Registration hooks of the fastattn._C module. To add a CPU kernel binding: write
// csrc/bindings/cpu_<name>.cpp defining register_cpu_<name>(m), declare it here and
// call it from cpu_module.cpp (CMake picks the new files up by glob).
#pragma once

#include <pybind11/pybind11.h>

namespace fastattn::bindings {

void register_cpu_activations(pybind11::module_& m);
void register_cpu_attention(pybind11::module_& m);

}  // namespace fastattn::bindings
