// pybind11 bindings of the tensor-core attention forward and backward (csrc/cuda/attention).
// Tensors arrive as raw addresses with (batch, head, seq) element strides (head dim
// contiguous); the Python side validated them and allocated the outputs (and the backward's
// workspace). The backward takes one dict of named values, as the CPU bindings do.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <string>

#include "../cuda/attention/attention.h"
#include "../cuda/attention/attention_bwd.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using S3 = std::array<int64_t, 3>;
void copy3(int64_t (&dst)[3], const S3& src) {
  for (int i = 0; i < 3; ++i) dst[i] = src[i];
}

// The backward's call description: one dict of named values (fastattn/backends/cuda_attention.py
// builds it). A tensor is (data_ptr, (stride_b, stride_h, stride_l)) in elements; a missing
// optional key keeps the field's default.
template <class T>
T get(const py::dict& d, const char* key, T fallback) {
  return d.contains(key) && !d[key].is_none() ? d[key].cast<T>() : fallback;
}

template <class Ptr>
Ptr tensor_arg(const py::dict& d, const char* key, int64_t (*strides)[3]) {
  if (!d.contains(key) || d[key].is_none()) return nullptr;
  const py::tuple t = d[key].cast<py::tuple>();
  if (t.size() != 2) throw py::value_error(std::string(key) + ": expected (ptr, (stride_b, stride_h, stride_l))");
  if (strides != nullptr) copy3(*strides, t[1].cast<S3>());
  return reinterpret_cast<Ptr>(t[0].cast<std::uintptr_t>());
}

cuda::AttnBwdParams bwd_params_from(const py::dict& d) {
  cuda::AttnBwdParams p;
  p.dtype = get<int>(d, "dtype", 0);
  p.q = tensor_arg<const void*>(d, "q", &p.q_strides);
  p.k = tensor_arg<const void*>(d, "k", &p.k_strides);
  p.v = tensor_arg<const void*>(d, "v", &p.v_strides);
  p.out = tensor_arg<const void*>(d, "out", &p.o_strides);
  p.dout = tensor_arg<const void*>(d, "dout", &p.do_strides);
  p.dq = tensor_arg<void*>(d, "dq", &p.dq_strides);
  p.dk = tensor_arg<void*>(d, "dk", &p.dk_strides);
  p.dv = tensor_arg<void*>(d, "dv", &p.dv_strides);
  p.lse = reinterpret_cast<const float*>(get<std::uintptr_t>(d, "lse", 0));
  p.workspace = reinterpret_cast<float*>(get<std::uintptr_t>(d, "workspace", 0));
  p.batch = get<int64_t>(d, "batch", 0);
  p.heads = get<int64_t>(d, "heads", 0);
  p.heads_k = get<int64_t>(d, "heads_k", 0);
  p.seqlen_q = get<int64_t>(d, "seqlen_q", 0);
  p.seqlen_k = get<int64_t>(d, "seqlen_k", 0);
  p.head_dim = get<int64_t>(d, "head_dim", 0);
  p.scale = get<float>(d, "scale", 1.0f);
  p.causal = get<bool>(d, "causal", false);
  p.bottom_right = get<bool>(d, "bottom_right", false);
  p.window_left = get<int>(d, "window_left", -1);
  p.window_right = get<int>(d, "window_right", -1);
  p.softcap = get<float>(d, "softcap", 0.0f);
  p.alibi_slopes = reinterpret_cast<const float*>(get<std::uintptr_t>(d, "alibi_slopes", 0));
  p.alibi_batch_stride = get<int64_t>(d, "alibi_batch_stride", 0);
  p.deterministic = get<bool>(d, "deterministic", false);
  return p;
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

  m.def("attention_bwd_supported", &cuda::attention_bwd_supported,
        "whether attention_bwd has kernels for this dtype code and head dim", py::arg("dtype"), py::arg("head_dim"));
  m.def(
      "attention_bwd_workspace_floats",
      [](const py::dict& spec) { return cuda::attention_bwd_workspace_floats(bwd_params_from(spec)); },
      "float32 elements of workspace attention_bwd needs for this call (sizes, head_dim, deterministic)",
      py::arg("spec"));
  m.def(
      "attention_bwd",
      [](const py::dict& spec) {
        const cuda::AttnBwdParams p = bwd_params_from(spec);
        const auto stream = reinterpret_cast<void*>(get<std::uintptr_t>(spec, "stream", 0));
        py::gil_scoped_release release;
        cuda::attention_bwd(p, stream);
      },
      "FlashAttention-2 backward on mma.sync: dq, dk, dv from one dict (see csrc/cuda/attention/attention_bwd.h "
      "and fastattn/backends/cuda_attention.py)",
      py::arg("spec"));
}

}  // namespace fastattn::bindings
