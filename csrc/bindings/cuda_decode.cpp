// pybind11 bindings of split-KV decoding (csrc/cuda/decode). split_kv_decode takes one
// parameter dict (csrc/bindings/spec.h; built by fastattn/backends/cuda/kernels.py): tensors as
// (data_ptr, stride_b, stride_s, stride_h) in elements with the last dim contiguous; the Python
// op validated them and allocated out, lse and the split workspace.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/decode/decode.h"
#include "spec.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
cuda::KvDecodeParams decode_params_from(const py::dict& d) {
  cuda::KvDecodeParams p;
  p.q = spec::tensor(d, "q", p.q_strides);
  p.k_cache = const_cast<void*>(spec::tensor(d, "k_cache", p.k_strides));
  p.v_cache = const_cast<void*>(spec::tensor(d, "v_cache", p.v_strides));
  p.k_new = spec::tensor(d, "k_new", p.kn_strides);
  p.v_new = spec::tensor(d, "v_new", p.vn_strides);
  spec::read_fields(d, "dtype", p.dtype, "cache_seqlens", p.cache_seqlens, "alibi_slopes", p.alibi_slopes,
                    "alibi_batch_stride", p.alibi_batch_stride, "out", p.out, "lse", p.lse, "o_partial", p.o_partial,
                    "lse_partial", p.lse_partial, "batch", p.batch, "seqlen_q", p.seqlen_q, "heads", p.heads,
                    "heads_k", p.heads_k, "head_dim", p.head_dim, "head_dim_v", p.head_dim_v, "seqlen_new",
                    p.seqlen_new, "max_seqlen_k", p.max_seqlen_k, "num_splits", p.num_splits, "scale", p.scale,
                    "softcap", p.softcap, "causal", p.causal, "window_left", p.window_left, "window_right",
                    p.window_right);
  return p;
}
}  // namespace

void register_cuda_decode(py::module_& m) {
  m.def("split_kv_num_splits", &cuda::split_kv_num_splits,
        "number of KV splits (workspace size) split_kv_decode uses for these sizes", py::arg("batch"),
        py::arg("seqlen_q"), py::arg("heads"), py::arg("max_seqlen_k"));
  m.def(
      "split_kv_decode",
      [](const py::dict& d) {
        const cuda::KvDecodeParams p = decode_params_from(d);
        void* stream = spec::address<void>(d, "stream");
        py::gil_scoped_release release;
        cuda::split_kv_decode(p, stream);
      },
      "flash_attn_with_kvcache from one dict (the fields of KvDecodeParams, csrc/cuda/decode/decode.h, plus "
      "stream): append k_new/v_new in place, split-KV attention, LSE merge",
      py::arg("spec"));
  m.attr("decode_max_head_dim") = cuda::kMaxDecodeHeadDim;
}

}  // namespace fastattn::bindings
