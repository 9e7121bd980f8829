// Host launchers of the fused activation kernels (gated_act.cuh, bias_gelu.cuh).
// Pointers are device pointers (host pointers in the simulated build); tensors are
// (rows, cols) with a row stride in elements and unit column stride; `dtype` is a code of
// csrc/common/dtype.h; `stream` a cudaStream_t (ignored by the simulated build).
// Inputs are validated by the Python op before these are called.
#pragma once

#include <cstdint>

namespace fastattn::cuda {

// out = act(gate) * up; `activation` is a GatedActivation code (csrc/common/dtype.h).
void gated_act_fwd(int dtype, int activation, const void* gate, const void* up, void* out, int64_t rows,
                   int64_t cols, int64_t gate_stride, int64_t up_stride, int64_t out_stride, void* stream);

// dgate = dout * up * act'(gate), dup = dout * act(gate).
void gated_act_bwd(int dtype, int activation, const void* dout, const void* gate, const void* up, void* dgate,
                   void* dup, int64_t rows, int64_t cols, int64_t dout_stride, int64_t gate_stride,
                   int64_t up_stride, int64_t dgate_stride, int64_t dup_stride, void* stream);

// out = gelu(x + bias); approximate_tanh selects GELU's tanh form; bias is (cols,).
void bias_gelu_fwd(int dtype, bool approximate_tanh, const void* x, const void* bias, void* out, int64_t rows,
                   int64_t cols, int64_t x_stride, int64_t out_stride, void* stream);

// dx = dout * gelu'(x + bias).
void bias_gelu_bwd(int dtype, bool approximate_tanh, const void* dout, const void* x, const void* bias, void* dx,
                   int64_t rows, int64_t cols, int64_t dout_stride, int64_t x_stride, int64_t dx_stride,
                   void* stream);

}  // namespace fastattn::cuda
