// pybind11 bindings of the tensor-core attention forward and backward (csrc/cuda/attention).
// Each takes one parameter dict (csrc/bindings/spec.h; built by
// fastattn/backends/cuda/attention.py): q, k, v, out, ... as (data_ptr, stride_b, stride_h,
// stride_l) in elements with the head dim contiguous; the Python side validated them and
// allocated the outputs (and the backward's workspace).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/attention/attention.h"
#include "../cuda/attention/attention_bwd.h"
#include "spec.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
// The forward's fields, which the backward's parameters extend.
void read_fwd_params(const py::dict& d, cuda::AttnFwdParams& p) {
  p.q = spec::tensor(d, "q", p.q_strides);
  p.k = spec::tensor(d, "k", p.k_strides);
  p.v = spec::tensor(d, "v", p.v_strides);
  p.out = const_cast<void*>(spec::tensor(d, "out", p.o_strides));
  spec::read_fields(d, "dtype", p.dtype, "lse", p.lse, "batch", p.batch, "heads", p.heads, "heads_k", p.heads_k,
                    "seqlen_q", p.seqlen_q, "seqlen_k", p.seqlen_k, "head_dim", p.head_dim, "scale", p.scale,
                    "causal", p.causal, "bottom_right", p.bottom_right, "window_left", p.window_left,
                    "window_right", p.window_right, "softcap", p.softcap, "alibi_slopes", p.alibi_slopes,
                    "alibi_batch_stride", p.alibi_batch_stride);
}

cuda::AttnBwdParams bwd_params_from(const py::dict& d) {
  cuda::AttnBwdParams p;
  read_fwd_params(d, p);
  p.dout = spec::tensor(d, "dout", p.do_strides);
  p.dq = const_cast<void*>(spec::tensor(d, "dq", p.dq_strides));
  p.dk = const_cast<void*>(spec::tensor(d, "dk", p.dk_strides));
  p.dv = const_cast<void*>(spec::tensor(d, "dv", p.dv_strides));
  spec::read_fields(d, "workspace", p.workspace, "deterministic", p.deterministic);
  return p;
}

void* stream_of(const py::dict& d) { return spec::address<void>(d, "stream"); }
}  // namespace

void register_cuda_attention(py::module_& m) {
  m.def("attention_fwd_supported", &cuda::attention_fwd_supported,
        "whether attention_fwd has kernels for this dtype code and head dim", py::arg("dtype"), py::arg("head_dim"));
  m.def(
      "attention_fwd",
      [](const py::dict& d) {
        cuda::AttnFwdParams p;
        read_fwd_params(d, p);
        void* stream = stream_of(d);
        py::gil_scoped_release release;
        cuda::attention_fwd(p, stream);
      },
      "FlashAttention-2 forward on mma.sync: writes out (B, H, Lq, D) and lse (B, H, Lq) float32 from one dict "
      "(q, k, v, out, lse, sizes, scale, causal, bottom_right, window_left/right, softcap, alibi_slopes, "
      "alibi_batch_stride, stream; see csrc/cuda/attention/attention.h)",
      py::arg("spec"));

  m.def("attention_bwd_supported", &cuda::attention_bwd_supported,
        "whether attention_bwd has kernels for this dtype code and head dim", py::arg("dtype"), py::arg("head_dim"));
  m.def(
      "attention_bwd_workspace_floats",
      [](const py::dict& d) { return cuda::attention_bwd_workspace_floats(bwd_params_from(d)); },
      "float32 elements of workspace attention_bwd needs for this call (sizes, head_dim, deterministic)",
      py::arg("spec"));
  m.def(
      "attention_bwd",
      [](const py::dict& d) {
        const cuda::AttnBwdParams p = bwd_params_from(d);
        void* stream = stream_of(d);
        py::gil_scoped_release release;
        cuda::attention_bwd(p, stream);
      },
      "FlashAttention-2 backward on mma.sync: dq, dk, dv from the forward's dict plus dout, dq, dk, dv, workspace "
      "and deterministic (see csrc/cuda/attention/attention_bwd.h)",
      py::arg("spec"));
}

}  // namespace fastattn::bindings
