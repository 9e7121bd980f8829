// Build and device queries of fastattn._cuda: which archs were compiled, the CUDA runtime
// version, how many devices there are. None of them needs a GPU or a driver.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/cuda_registry.h"
#include "cuda/info.h"

#if defined(FASTATTN_WITH_CUDA_RUNTIME)
#include <cuda_runtime_api.h>
#endif

#ifndef FASTATTN_CUDA_ARCHS_STR
#define FASTATTN_CUDA_ARCHS_STR ""
#endif

namespace py = pybind11;

namespace fastattn::bindings {
namespace {

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ";") {
    if (c == ';') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

}  // namespace

void register_cuda_info(py::module_& m) {
  m.def("compiled_archs", &cuda::compiled_archs,
        "SM versions this build has code for, sorted, e.g. [80, 86, 89, 90] (90a counts as 90).");
  m.def("compiled_arch_names", [] { return split_archs(FASTATTN_CUDA_ARCHS_STR); },
        "The architectures as configured (FASTATTN_CUDA_ARCHS), e.g. ['80', '86', '89', '90a'].");
  m.def("probe_device_arch", &cuda::probe_device_arch, py::arg("device") = 0,
        "Run a tiny kernel on `device`; returns the arch of the code image that ran "
        "(RuntimeError without a usable GPU).");
#if defined(FASTATTN_WITH_CUDA_RUNTIME)
  m.def("cuda_runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  }, "CUDA runtime version this module was built with, as 1000*major + 10*minor (13000 = 13.0).");
  m.def("device_count", [] {
    int n = 0;
    // No driver or no device is an error code, not an exception: report zero devices.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // reset the last-error state so later calls do not see it
      return 0;
    }
    return n;
  }, "Number of CUDA devices visible (0 when there is no driver or GPU).");
#endif
}

}  // namespace fastattn::bindings
