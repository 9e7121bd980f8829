// Launchers of the fused activation kernels: dtype/activation dispatch, grid sizing and the
// one-time alignment check that lets the kernels use 16-byte accesses.
#include <initializer_list>
#include <stdexcept>

#include "../../common/dtype.h"
#include "../common/dispatch.h"
#include "activations.h"
#include "bias_gelu.cuh"
#include "gated_act.cuh"

namespace fastattn::cuda {
namespace {

// Enough blocks to fill the largest GPU several times over; more only adds scheduling work
// since the kernels stride over the chunks.
constexpr long long kMaxBlocks = 4096;

dim3 elementwise_grid(int64_t rows, int64_t cols, int vec) {
  const long long chunks = rows * ((cols + vec - 1) / vec);
  long long blocks = (chunks + kElementwiseThreads - 1) / kElementwiseThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return dim3(static_cast<unsigned>(blocks < 1 ? 1 : blocks));
}

// True when every row of every tensor starts on a 16-byte boundary.
template <typename T>
bool rows_aligned(std::initializer_list<const void*> ptrs, std::initializer_list<int64_t> strides) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  for (int64_t s : strides)
    if ((s * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  return true;
}

template <typename F>
void dispatch_act(int code, F&& f) {
  switch (static_cast<GatedActivation>(code)) {
    case GatedActivation::kSwiGLU: f(std::integral_constant<Act, Act::kSilu>{}); return;
    case GatedActivation::kGeGLU: f(std::integral_constant<Act, Act::kGelu>{}); return;
    case GatedActivation::kGeGLUTanh: f(std::integral_constant<Act, Act::kGeluTanh>{}); return;
  }
  throw std::invalid_argument("fastattn cuda: unknown activation code");
}

}  // namespace

void gated_act_fwd(int dtype, int activation, const void* gate, const void* up, void* out, int64_t rows,
                   int64_t cols, int64_t gate_stride, int64_t up_stride, int64_t out_stride, void* stream) {
  if (rows == 0 || cols == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_aligned<T>({gate, up, out}, {gate_stride, up_stride, out_stride});
    dispatch_act(activation, [&](auto act) {
      launch(gated_act_fwd_kernel<T, decltype(act)::value>, elementwise_grid(rows, cols, kVec16<T>),
             dim3(kElementwiseThreads), 0, static_cast<cudaStream_t>(stream), static_cast<const T*>(gate),
             static_cast<const T*>(up), static_cast<T*>(out), static_cast<long long>(rows),
             static_cast<long long>(cols), static_cast<long long>(gate_stride), static_cast<long long>(up_stride),
             static_cast<long long>(out_stride), vec_ok);
    });
  });
}

void gated_act_bwd(int dtype, int activation, const void* dout, const void* gate, const void* up, void* dgate,
                   void* dup, int64_t rows, int64_t cols, int64_t dout_stride, int64_t gate_stride,
                   int64_t up_stride, int64_t dgate_stride, int64_t dup_stride, void* stream) {
  if (rows == 0 || cols == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_aligned<T>({dout, gate, up, dgate, dup},
                                        {dout_stride, gate_stride, up_stride, dgate_stride, dup_stride});
    dispatch_act(activation, [&](auto act) {
      launch(gated_act_bwd_kernel<T, decltype(act)::value>, elementwise_grid(rows, cols, kVec16<T>),
             dim3(kElementwiseThreads), 0, static_cast<cudaStream_t>(stream), static_cast<const T*>(dout),
             static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(dgate), static_cast<T*>(dup),
             static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(dout_stride),
             static_cast<long long>(gate_stride), static_cast<long long>(up_stride),
             static_cast<long long>(dgate_stride), static_cast<long long>(dup_stride), vec_ok);
    });
  });
}

void bias_gelu_fwd(int dtype, bool approximate_tanh, const void* x, const void* bias, void* out, int64_t rows,
                   int64_t cols, int64_t x_stride, int64_t out_stride, void* stream) {
  if (rows == 0 || cols == 0) return;
  const int code = static_cast<int>(approximate_tanh ? GatedActivation::kGeGLUTanh : GatedActivation::kGeGLU);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_aligned<T>({x, bias, out}, {x_stride, out_stride});
    dispatch_act(code, [&](auto act) {
      if constexpr (decltype(act)::value != Act::kSilu) {
        launch(bias_gelu_fwd_kernel<T, decltype(act)::value>, elementwise_grid(rows, cols, kVec16<T>),
               dim3(kElementwiseThreads), 0, static_cast<cudaStream_t>(stream), static_cast<const T*>(x),
               static_cast<const T*>(bias), static_cast<T*>(out), static_cast<long long>(rows),
               static_cast<long long>(cols), static_cast<long long>(x_stride), static_cast<long long>(out_stride),
               vec_ok);
      }
    });
  });
}

void bias_gelu_bwd(int dtype, bool approximate_tanh, const void* dout, const void* x, const void* bias, void* dx,
                   int64_t rows, int64_t cols, int64_t dout_stride, int64_t x_stride, int64_t dx_stride,
                   void* stream) {
  if (rows == 0 || cols == 0) return;
  const int code = static_cast<int>(approximate_tanh ? GatedActivation::kGeGLUTanh : GatedActivation::kGeGLU);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_aligned<T>({dout, x, bias, dx}, {dout_stride, x_stride, dx_stride});
    dispatch_act(code, [&](auto act) {
      if constexpr (decltype(act)::value != Act::kSilu) {
        launch(bias_gelu_bwd_kernel<T, decltype(act)::value>, elementwise_grid(rows, cols, kVec16<T>),
               dim3(kElementwiseThreads), 0, static_cast<cudaStream_t>(stream), static_cast<const T*>(dout),
               static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(dx),
               static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(dout_stride),
               static_cast<long long>(x_stride), static_cast<long long>(dx_stride), vec_ok);
      }
    });
  });
}

}  // namespace fastattn::cuda
