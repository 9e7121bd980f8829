// pybind11 bindings of the scale-mask-softmax launchers (csrc/cuda/softmax). Each takes one
// parameter dict (csrc/bindings/spec.h; built by fastattn/backends/cuda/kernels.py): 4-D tensors
// as (data_ptr, stride_b, stride_h, stride_q, stride_k) in elements; the Python op validated them.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../cuda/softmax/softmax.h"
#include "spec.h"

namespace py = pybind11;

namespace fastattn::bindings {

namespace {
using spec::get;

// The (B, H, Lq, Lk) tensor under `key`, its strides into *strides.
const void* tensor4(const py::dict& d, const char* key, cuda::Strides4* strides) {
  int64_t s[4];
  const void* ptr = spec::tensor(d, key, s);
  *strides = {s[0], s[1], s[2], s[3]};
  return ptr;
}

// The fields both directions take besides their tensors.
struct Common {
  int dtype;
  int64_t batch, heads, seqlen_q, seqlen_k;
  float scale;
  void* stream;
  explicit Common(const py::dict& d)
      : dtype(get<int>(d, "dtype", 0)),
        batch(get<int64_t>(d, "batch", 0)),
        heads(get<int64_t>(d, "heads", 0)),
        seqlen_q(get<int64_t>(d, "seqlen_q", 0)),
        seqlen_k(get<int64_t>(d, "seqlen_k", 0)),
        scale(get<float>(d, "scale", 1.0f)),
        stream(spec::address<void>(d, "stream")) {}
};
}  // namespace

void register_cuda_softmax(py::module_& m) {
  m.def(
      "scaled_masked_softmax_fwd",
      [](const py::dict& d) {
        cuda::Strides4 xs, ys, ms;
        const void* x = tensor4(d, "x", &xs);
        void* y = const_cast<void*>(tensor4(d, "y", &ys));
        const void* mask = tensor4(d, "mask", &ms);
        const int mask_kind = get<int>(d, "mask_kind", 0);
        const bool causal = get<bool>(d, "causal", false);
        const Common c(d);
        py::gil_scoped_release release;
        cuda::scaled_masked_softmax_fwd(c.dtype, x, xs, y, ys, mask, mask_kind, ms, c.batch, c.heads, c.seqlen_q,
                                        c.seqlen_k, c.scale, causal, c.stream);
      },
      "y = softmax(scale * x [+ mask], masked) over the last dim of (B, H, Lq, Lk), from one dict (dtype, x, y, "
      "mask, mask_kind: 0 none, 1 bool (nonzero = masked out), 2/3/4 additive fp32/fp16/bf16; batch, heads, "
      "seqlen_q, seqlen_k, scale, causal, stream)",
      py::arg("spec"));
  m.def(
      "scaled_masked_softmax_bwd",
      [](const py::dict& d) {
        cuda::Strides4 dys, ys, dxs;
        const void* dy = tensor4(d, "dy", &dys);
        const void* y = tensor4(d, "y", &ys);
        void* dx = const_cast<void*>(tensor4(d, "dx", &dxs));
        const Common c(d);
        py::gil_scoped_release release;
        cuda::scaled_masked_softmax_bwd(c.dtype, dy, dys, y, ys, dx, dxs, c.batch, c.heads, c.seqlen_q, c.seqlen_k,
                                        c.scale, c.stream);
      },
      "dx = scale * y * (dy - sum(dy * y)) over the last dim of (B, H, Lq, Lk), from one dict (dtype, dy, y, dx, "
      "batch, heads, seqlen_q, seqlen_k, scale, stream)",
      py::arg("spec"));
  m.attr("softmax_max_row") = cuda::kSoftmaxMaxRow;
}

}  // namespace fastattn::bindings
