// fastattn._cuda_sim: the csrc/cuda kernels built for the host SIMT runtime, with the same
// functions (and the same raw-pointer signatures) as fastattn._cuda. Pointers are host
// addresses of CPU tensors; stream handles are accepted and ignored. Also the runtime's
// settings (runtime.h, Options): sim_options() and set_sim_options().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "fastattn_sim/runtime.h"

namespace fastattn::bindings {
void register_cuda_kernels(pybind11::module_& m);
}

PYBIND11_MODULE(_cuda_sim, m) {
  namespace py = pybind11;
  m.doc() = "fastattn CUDA C++ kernels run on the CPU by the host SIMT runtime (csrc/sim)";
  m.attr("simulated") = true;
  fastattn::bindings::register_cuda_kernels(m);
  m.def(
      "sim_options",
      []() {
        const fastattn::sim::Options o = fastattn::sim::options();
        py::dict d;
        d["concurrent_blocks"] = o.concurrent_blocks;
        d["early_copies"] = o.early_copies;
        d["seed"] = o.seed;
        return d;
      },
      "The simulator's settings: blocks in flight at once, whether cp.async copies land at random "
      "points before their wait, and the seed of those points (defaults from FASTATTN_SIM_BLOCKS, "
      "FASTATTN_SIM_EARLY_COPIES, FASTATTN_SIM_SEED).");
  m.def(
      "set_sim_options",
      [](std::optional<unsigned> concurrent_blocks, std::optional<bool> early_copies,
         std::optional<unsigned long long> seed) {
        fastattn::sim::Options o = fastattn::sim::options();
        if (concurrent_blocks) {
          if (*concurrent_blocks < 1) throw py::value_error("concurrent_blocks must be at least 1");
          o.concurrent_blocks = *concurrent_blocks;
        }
        if (early_copies) o.early_copies = *early_copies;
        if (seed) o.seed = *seed;
        fastattn::sim::set_options(o);
      },
      py::arg("concurrent_blocks") = py::none(), py::arg("early_copies") = py::none(), py::arg("seed") = py::none(),
      "Changes the settings sim_options() returns, for the launches that follow.");
}
