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
using spec::get;

cuda::KvDecodeParams decode_params_from(const py::dict& d) {
  cuda::KvDecodeParams p;
  p.dtype = get<int>(d, "dtype", 0);
  p.q = spec::tensor(d, "q", p.q_strides);
  p.k_cache = const_cast<void*>(spec::tensor(d, "k_cache", p.k_strides));
  p.v_cache = const_cast<void*>(spec::tensor(d, "v_cache", p.v_strides));
  p.k_new = spec::tensor(d, "k_new", p.kn_strides);
  p.v_new = spec::tensor(d, "v_new", p.vn_strides);
  p.cache_seqlens = spec::address<const int>(d, "cache_seqlens");
  p.alibi_slopes = spec::address<const float>(d, "alibi_slopes");
  p.alibi_batch_stride = get<int64_t>(d, "alibi_batch_stride", 0);
  p.out = spec::address<void>(d, "out");
  p.lse = spec::address<float>(d, "lse");
  p.o_partial = spec::address<float>(d, "o_partial");
  p.lse_partial = spec::address<float>(d, "lse_partial");
  p.batch = get<int64_t>(d, "batch", 0);
  p.seqlen_q = get<int64_t>(d, "seqlen_q", 0);
  p.heads = get<int64_t>(d, "heads", 0);
  p.heads_k = get<int64_t>(d, "heads_k", 0);
  p.head_dim = get<int64_t>(d, "head_dim", 0);
  p.head_dim_v = get<int64_t>(d, "head_dim_v", 0);
  p.seqlen_new = get<int64_t>(d, "seqlen_new", 0);
  p.max_seqlen_k = get<int64_t>(d, "max_seqlen_k", 0);
  p.num_splits = get<int>(d, "num_splits", 1);
  p.scale = get<float>(d, "scale", 1.0f);
  p.softcap = get<float>(d, "softcap", 0.0f);
  p.causal = get<bool>(d, "causal", false);
  p.window_left = get<int64_t>(d, "window_left", -1);
  p.window_right = get<int64_t>(d, "window_right", -1);
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
