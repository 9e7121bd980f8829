// pybind11 bindings of split-KV decoding (csrc/cuda/decode). Tensors arrive as raw
// addresses with (b, s, h) element strides (last dim contiguous); the Python op validated
// them and allocated out, lse and the split workspace.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "../cuda/decode/decode.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using S3 = std::array<int64_t, 3>;
void copy3(int64_t (&dst)[3], const S3& src) {
  for (int i = 0; i < 3; ++i) dst[i] = src[i];
}
template <typename P>
P* ptr(std::uintptr_t a) { return reinterpret_cast<P*>(a); }
}  // namespace

void register_cuda_decode(py::module_& m) {
  m.def("split_kv_num_splits", &cuda::split_kv_num_splits,
        "number of KV splits (workspace size) split_kv_decode uses for these sizes", py::arg("batch"),
        py::arg("seqlen_q"), py::arg("heads"), py::arg("max_seqlen_k"));
  m.def(
      "split_kv_decode",
      [](int dtype, std::uintptr_t q, S3 q_strides, std::uintptr_t k_cache, S3 k_strides, std::uintptr_t v_cache,
         S3 v_strides, std::uintptr_t k_new, S3 kn_strides, std::uintptr_t v_new, S3 vn_strides,
         std::uintptr_t cache_seqlens, std::uintptr_t alibi_slopes, int64_t alibi_batch_stride, std::uintptr_t out,
         std::uintptr_t lse, std::uintptr_t o_partial, std::uintptr_t lse_partial, int64_t batch, int64_t seqlen_q,
         int64_t heads, int64_t heads_k, int64_t head_dim, int64_t head_dim_v, int64_t seqlen_new,
         int64_t max_seqlen_k, int num_splits, float scale, float softcap, bool causal, int64_t window_left,
         int64_t window_right, std::uintptr_t stream) {
        cuda::KvDecodeParams p;
        p.dtype = dtype;
        p.q = ptr<const void>(q);
        copy3(p.q_strides, q_strides);
        p.k_cache = ptr<void>(k_cache);
        p.v_cache = ptr<void>(v_cache);
        copy3(p.k_strides, k_strides);
        copy3(p.v_strides, v_strides);
        p.k_new = ptr<const void>(k_new);
        p.v_new = ptr<const void>(v_new);
        copy3(p.kn_strides, kn_strides);
        copy3(p.vn_strides, vn_strides);
        p.cache_seqlens = ptr<const int>(cache_seqlens);
        p.alibi_slopes = ptr<const float>(alibi_slopes);
        p.alibi_batch_stride = alibi_batch_stride;
        p.out = ptr<void>(out);
        p.lse = ptr<float>(lse);
        p.o_partial = ptr<float>(o_partial);
        p.lse_partial = ptr<float>(lse_partial);
        p.batch = batch;
        p.seqlen_q = seqlen_q;
        p.heads = heads;
        p.heads_k = heads_k;
        p.head_dim = head_dim;
        p.head_dim_v = head_dim_v;
        p.seqlen_new = seqlen_new;
        p.max_seqlen_k = max_seqlen_k;
        p.num_splits = num_splits;
        p.scale = scale;
        p.softcap = softcap;
        p.causal = causal;
        p.window_left = window_left;
        p.window_right = window_right;
        py::gil_scoped_release release;
        cuda::split_kv_decode(p, ptr<void>(stream));
      },
      "flash_attn_with_kvcache: append k_new/v_new in place, split-KV attention, LSE merge "
      "(see csrc/cuda/decode/decode.h)",
      py::arg("dtype"), py::arg("q"), py::arg("q_strides"), py::arg("k_cache"), py::arg("k_strides"),
      py::arg("v_cache"), py::arg("v_strides"), py::arg("k_new"), py::arg("kn_strides"), py::arg("v_new"),
      py::arg("vn_strides"), py::arg("cache_seqlens"), py::arg("alibi_slopes"), py::arg("alibi_batch_stride"),
      py::arg("out"), py::arg("lse"), py::arg("o_partial"), py::arg("lse_partial"), py::arg("batch"),
      py::arg("seqlen_q"), py::arg("heads"), py::arg("heads_k"), py::arg("head_dim"), py::arg("head_dim_v"),
      py::arg("seqlen_new"), py::arg("max_seqlen_k"), py::arg("num_splits"), py::arg("scale"), py::arg("softcap"),
      py::arg("causal"), py::arg("window_left"), py::arg("window_right"), py::arg("stream"));
  m.attr("decode_max_head_dim") = cuda::kMaxDecodeHeadDim;
}

}  // namespace fastattn::bindings
