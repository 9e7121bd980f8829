// Registration hooks of the fastattn._cuda module. To add a CUDA kernel binding: write
// csrc/bindings/cuda_<name>.cpp defining register_cuda_<name>(m) and call it from
// register_cuda_kernels (cuda_kernels.cpp), which both fastattn._cuda and the host
// simulation module fastattn._cuda_sim call. CMake picks new files up by glob.
#pragma once

#include <pybind11/pybind11.h>

namespace fastattn::bindings {

// Build and device queries (compiled_archs, cuda_runtime_version, device_count): _cuda only.
void register_cuda_info(pybind11::module_& m);

// Every kernel family of csrc/cuda.
void register_cuda_kernels(pybind11::module_& m);

}  // namespace fastattn::bindings
