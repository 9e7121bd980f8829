// pybind11 bindings of the native CPU attention (csrc/cpu/attention.h) for fastattn._C.
//
// Each function takes one dict describing the call (built by
// fastattn/backends/cpu/attention.py); a tensor is a tuple (data_ptr, stride_b, stride_h,
// stride_l, stride_d) with strides in elements. Inputs were validated in Python; the
// kernels run with the GIL released.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/cpu_registry.h"
#include "bindings/spec.h"
#include "cpu/attention.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {

using cpu::AttnParams;
using cpu::AttnTensor;
using spec::get;

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
  p.dtype = get<int>(d, "dtype", 0);
  p.batch = get<int64_t>(d, "batch", 0);
  p.heads_q = get<int64_t>(d, "heads_q", 0);
  p.heads_k = get<int64_t>(d, "heads_k", 0);
  p.seqlen_q = get<int64_t>(d, "seqlen_q", 0);
  p.seqlen_k = get<int64_t>(d, "seqlen_k", 0);
  p.head_dim = get<int64_t>(d, "head_dim", 0);
  p.head_dim_v = get<int64_t>(d, "head_dim_v", 0);
  p.q = tensor_arg(d, "q");
  p.k = tensor_arg(d, "k");
  p.v = tensor_arg(d, "v");
  p.out = tensor_arg(d, "out");
  p.dout = tensor_arg(d, "dout");
  p.dq = tensor_arg(d, "dq");
  p.dk = tensor_arg(d, "dk");
  p.dv = tensor_arg(d, "dv");
  const AttnTensor lse = tensor_arg(d, "lse");  // (ptr, sb, sh, sl, unused)
  p.lse = const_cast<float*>(static_cast<const float*>(lse.ptr));
  p.lse_sb = lse.sb;
  p.lse_sh = lse.sh;
  p.lse_sl = lse.sl;
  p.mask_kind = static_cast<cpu::AttnMaskKind>(get<int>(d, "mask_kind", 0));
  p.mask_dtype = get<int>(d, "mask_dtype", 0);
  p.mask = tensor_arg(d, "mask");
  const AttnTensor alibi = tensor_arg(d, "alibi");  // (ptr, sb, sh, 0, 0)
  p.alibi = static_cast<const float*>(alibi.ptr);
  p.alibi_sb = alibi.sb;
  p.alibi_sh = alibi.sh;
  p.cu_seqlens_q = spec::address<const int64_t>(d, "cu_seqlens_q");
  p.cu_seqlens_k = spec::address<const int64_t>(d, "cu_seqlens_k");
  p.num_seqs = get<int64_t>(d, "num_seqs", 0);
  p.scale = get<float>(d, "scale", 1.0f);
  p.softcap = get<float>(d, "softcap", 0.0f);
  p.dropout_p = get<float>(d, "dropout_p", 0.0f);
  p.seed = get<uint64_t>(d, "seed", 0);
  p.rng_offset = get<int64_t>(d, "rng_offset", 0);
  p.drop_lq = get<int64_t>(d, "drop_lq", 0);
  p.drop_lk = get<int64_t>(d, "drop_lk", 0);
  p.causal = get<bool>(d, "causal", false);
  p.bottom_right = get<bool>(d, "bottom_right", false);
  p.window_left = get<int64_t>(d, "window_left", -1);
  p.window_right = get<int64_t>(d, "window_right", -1);
  p.deterministic = get<bool>(d, "deterministic", false);
  p.num_threads = get<int>(d, "num_threads", 1);
  return p;
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
  m.def(
      "cpu_attention_fwd",
      [](const py::dict& spec) {
        const AttnParams p = params_from(spec);
        py::gil_scoped_release release;
        cpu::attention_fwd(p);
      },
      py::arg("spec"),
      "Fused attention forward on the CPU: writes spec['out'] (B,Hq,Lq,Dv) and spec['lse'] "
      "(B,Hq,Lq) fp32. See fastattn/backends/cpu_attention.py for the spec's keys.");
  m.def(
      "cpu_attention_bwd",
      [](const py::dict& spec) {
        const AttnParams p = params_from(spec);
        py::gil_scoped_release release;
        cpu::attention_bwd(p);
      },
      py::arg("spec"),
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
