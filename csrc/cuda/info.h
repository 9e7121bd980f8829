// Build and device facts of the fastattn._cuda module.
#pragma once

#include <vector>

namespace fastattn::cuda {

// The SM versions nvcc generated code for in this build (e.g. {80, 86, 89, 90}; sm_90a
// reports as 90), taken from nvcc's own __CUDA_ARCH_LIST__. Empty when not built by nvcc.
std::vector<int> compiled_archs();

// Runs a one-thread kernel on `device` and returns the __CUDA_ARCH__ of the code image
// the driver picked for it divided by 10 (e.g. 90), proving the build runs there.
// Throws std::runtime_error on any CUDA error (no driver, no device, no image).
int probe_device_arch(int device);

}  // namespace fastattn::cuda
