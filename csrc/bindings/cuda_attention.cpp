// pybind11 bindings of the tensor-core attention forward (csrc/cuda/attention). Tensors
// arrive as raw addresses with (batch, head, seq) element strides (head dim contiguous);
// the Python side validated them and allocated out and lse.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "../cuda/attention/attention.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using S3 = std::array<int64_t, 3>;
void copy3(int64_t (&dst)[3], const S3& src) {
  for (int i = 0; i < 3; ++i) dst[i] = src[i];
}
}  // namespace

void register_cuda_attention(py::module_& m) {
  m.def("attention_fwd_supported", &cuda::attention_fwd_supported,
        "whether attention_fwd has kernels for this dtype code and head dim", py::arg("dtype"), py::arg("head_dim"));
  m.def(
      "attention_fwd",
      [](int dtype, std::uintptr_t q, S3 q_strides, std::uintptr_t k, S3 k_strides, std::uintptr_t v, S3 v_strides,
         std::uintptr_t out, S3 o_strides, std::uintptr_t lse, int64_t batch, int64_t heads, int64_t heads_k,
         int64_t seqlen_q, int64_t seqlen_k, int64_t head_dim, float scale, bool causal, bool bottom_right,
         int window_left, int window_right, float softcap, std::uintptr_t alibi_slopes, int64_t alibi_batch_stride,
         std::uintptr_t stream) {
        cuda::AttnFwdParams p;
        p.dtype = dtype;
        p.q = reinterpret_cast<const void*>(q);
        p.k = reinterpret_cast<const void*>(k);
        p.v = reinterpret_cast<const void*>(v);
        p.out = reinterpret_cast<void*>(out);
        p.lse = reinterpret_cast<float*>(lse);
        copy3(p.q_strides, q_strides);
        copy3(p.k_strides, k_strides);
        copy3(p.v_strides, v_strides);
        copy3(p.o_strides, o_strides);
        p.batch = batch;
        p.heads = heads;
        p.heads_k = heads_k;
        p.seqlen_q = seqlen_q;
        p.seqlen_k = seqlen_k;
        p.head_dim = head_dim;
        p.scale = scale;
        p.causal = causal;
        p.bottom_right = bottom_right;
        p.window_left = window_left;
        p.window_right = causal ? 0 : window_right;
        p.softcap = softcap;
        p.alibi_slopes = reinterpret_cast<const float*>(alibi_slopes);
        p.alibi_batch_stride = alibi_batch_stride;
        py::gil_scoped_release release;
        cuda::attention_fwd(p, reinterpret_cast<void*>(stream));
      },
      "FlashAttention-2 forward on mma.sync: out (B, H, Lq, D) and lse (B, H, Lq) float32; alibi_slopes 0 for none "
      "(see csrc/cuda/attention/attention.h)",
      py::arg("dtype"), py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"),
      py::arg("v_strides"), py::arg("out"), py::arg("o_strides"), py::arg("lse"), py::arg("batch"), py::arg("heads"),
      py::arg("heads_k"), py::arg("seqlen_q"), py::arg("seqlen_k"), py::arg("head_dim"), py::arg("scale"),
      py::arg("causal"), py::arg("bottom_right"), py::arg("window_left"), py::arg("window_right"),
      py::arg("softcap"), py::arg("alibi_slopes"), py::arg("alibi_batch_stride"), py::arg("stream"));
}

}  // namespace fastattn::bindings
