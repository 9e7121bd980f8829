// pybind11 bindings of the native CPU attention (csrc/cpu/attention.h) for fastattn._C.
//
// Each function takes one dict describing the call (built by
// fastattn/backends/cpu/attention.py); a tensor is a tuple (data_ptr, stride_b, stride_h,
// stride_l, stride_d) with strides in elements. Inputs were validated in Python; the
// kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bindings/cpu_registry.h"
#include "bindings/spec.h"
#include "cpu/attention.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {

using cpu::AttnParams;
using cpu::AttnTensor;
AttnTensor tensor_arg(const py::dict& d, const char* key) {
  AttnTensor t;
  int64_t s[4];
  t.ptr = spec::tensor(d, key, s);
  t.sb = s[0];
  t.sh = s[1];
  t.sl = s[2];
  t.sd = s[3];
  return t;
}

AttnParams params_from(const py::dict& d) {
  AttnParams p;
  for (auto [key, t] : {std::pair{"q", &p.q}, {"k", &p.k}, {"v", &p.v}, {"out", &p.out}, {"dout", &p.dout},
                        {"dq", &p.dq}, {"dk", &p.dk}, {"dv", &p.dv}, {"mask", &p.mask}})
    *t = tensor_arg(d, key);
  const AttnTensor lse = tensor_arg(d, "lse");  // (ptr, sb, sh, sl, unused)
  p.lse = const_cast<float*>(static_cast<const float*>(lse.ptr));
  p.lse_sb = lse.sb, p.lse_sh = lse.sh, p.lse_sl = lse.sl;
  const AttnTensor alibi = tensor_arg(d, "alibi");  // (ptr, sb, sh, 0, 0)
  p.alibi = static_cast<const float*>(alibi.ptr);
  p.alibi_sb = alibi.sb, p.alibi_sh = alibi.sh;
  spec::read_fields(d, "dtype", p.dtype, "batch", p.batch, "heads_q", p.heads_q, "heads_k", p.heads_k, "seqlen_q",
                    p.seqlen_q, "seqlen_k", p.seqlen_k, "head_dim", p.head_dim, "head_dim_v", p.head_dim_v,
                    "mask_kind", p.mask_kind, "mask_dtype", p.mask_dtype, "cu_seqlens_q", p.cu_seqlens_q,
                    "cu_seqlens_k", p.cu_seqlens_k, "num_seqs", p.num_seqs, "scale", p.scale, "softcap", p.softcap,
                    "dropout_p", p.dropout_p, "seed", p.seed, "rng_offset", p.rng_offset, "drop_lq", p.drop_lq,
                    "drop_lk", p.drop_lk, "causal", p.causal, "bottom_right", p.bottom_right, "window_left",
                    p.window_left, "window_right", p.window_right, "deterministic", p.deterministic,
                    "num_threads", p.num_threads);
  return p;
}

// A kernel entry point called with the spec's parameters, the GIL released.
template <void (*Kernel)(const AttnParams&)>
void run(const py::dict& spec) {
  const AttnParams p = params_from(spec);
  py::gil_scoped_release release;
  Kernel(p);
}

}  // namespace

void register_cpu_attention(py::module_& m) {
  m.def("cpu_attention_isa", &cpu::attention_isa,
        "Instruction set the CPU attention kernels run with here: avx512bf16, avx512, avx2 or none.");
  m.def(
      "cpu_attention_use_isa", [](const std::string& name) { return cpu::attention_use_isa(name.c_str()); },
      py::arg("name"),
      "Run the CPU attention with a lower instruction set than this CPU's best ('avx2', 'avx512', "
      "'avx512bf16'; 'auto' restores the best), for tests. Returns False if the CPU lacks it.");
  m.def("cpu_attention_fwd", &run<cpu::attention_fwd>, py::arg("spec"),
        "Fused attention forward on the CPU: writes spec['out'] (B,Hq,Lq,Dv) and spec['lse'] "
        "(B,Hq,Lq) fp32. See fastattn/backends/cpu/attention.py for the spec's keys.");
  m.def("cpu_attention_bwd", &run<cpu::attention_bwd>, py::arg("spec"),
        "Fused attention backward on the CPU: writes spec['dq'], spec['dk'], spec['dv'] from "
        "q, k, v, out, lse and dout.");
  m.def(
      "cpu_decode_fwd",
      [](const py::dict& spec) {
        AttnParams p = params_from(spec);
        // The key counts: a list of ints (batch entries, copied here: a decoding step need not
        // build a tensor for them) or the address of int64 (batch,) values.
        std::vector<int64_t> lens;
        PyObject* v = spec::item(spec, "kv_lens");
        if (v != nullptr && PyList_Check(v)) {
          if (PyList_GET_SIZE(v) != p.batch)
            throw py::value_error("cpu_decode_fwd: spec['kv_lens'] must hold one key count per batch element");
          lens.reserve(p.batch);
          for (Py_ssize_t b = 0; b < p.batch; ++b) lens.push_back(py::handle(PyList_GET_ITEM(v, b)).cast<int64_t>());
          p.kv_lens = lens.data();
        } else if (v != nullptr) {
          p.kv_lens = reinterpret_cast<const int64_t*>(py::handle(v).cast<uintptr_t>());
        }
        if (p.kv_lens == nullptr)
          throw py::value_error("cpu_decode_fwd: spec['kv_lens'] (key counts: a list, or the address of int64 values) "
                                "is required");
        py::gil_scoped_release release;
        cpu::decode_fwd(p);
      },
      py::arg("spec"),
      "KV-cache decoding on the CPU: a few query rows against caches read in place, batch "
      "element b over its first spec['kv_lens'][b] keys (a list of ints, or the address of "
      "int64 values). Writes spec['out'] and spec['lse'].");
}

}  // namespace fastattn::bindings
