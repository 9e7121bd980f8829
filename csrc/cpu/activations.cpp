// Fused gated activations (SwiGLU, GeGLU erf/tanh) and fused bias + GELU (erf/tanh),
// forward and backward, on the CPU.
//
// Work is split into tiles of up to kTile elements of one row; OpenMP spreads the tiles
// (not just the rows, so one long row still uses every core). A tile is processed in
// three passes over small on-stack float32 buffers: convert the inputs to float32,
// compute, convert and store. Each pass is a plain loop over contiguous elements with
// no calls and no branches, which GCC/Clang vectorise in each ISA clone
// (FASTATTN_CPU_CLONES); a single fused loop mixing 16- and 32-bit lanes does not.
//
// Math (x = gate, s = sigmoid):
//   swiglu:      a(x) = x * s(x)                    a'(x) = s(x) * (1 + x * (1 - s(x)))
//   geglu (erf): a(x) = x * Phi(x)                  a'(x) = Phi(x) + x * phi(x)
//   geglu_tanh:  a(x) = x * s(2u), u = k(x + c x^3) a'(x) = s + 2 x s (1 - s) k (1 + 3 c x^2)
// using 0.5 * (1 + tanh(u)) = s(2u); k = sqrt(2/pi), c = 0.044715 (torch's tanh GELU).
// bias_gelu is the GELU a(x) of the two geglu rows at x + bias, with no gate multiply.
#include "cpu/activations.h"

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/simd_math.h"

namespace fastattn::cpu {
namespace {

constexpr int64_t kTile = 512;
// Below this many elements the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelMinElems = 1 << 15;

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluTanhC = 0.044715f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

template <DType D>
FASTATTN_INLINE void load(const void* src, float* __restrict__ dst, int64_t n) {
  if constexpr (D == DType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = s[i];
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i)
      dst[i] = D == DType::kBFloat16 ? bf16_to_f32(s[i]) : f16_to_f32(s[i]);
  }
}

template <DType D>
FASTATTN_INLINE void store(const float* __restrict__ src, void* dst, int64_t n) {
  if constexpr (D == DType::kFloat32) {
    float* d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = src[i];
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i)
      d[i] = D == DType::kBFloat16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
  }
}

// A row of n elements `stride` elements apart (a strided bias), gathered to float32.
template <DType D>
FASTATTN_INLINE void load_strided(const void* src, int64_t stride, float* __restrict__ dst,
                                  int64_t n) {
  if (stride == 1) return load<D>(src, dst, n);
  if constexpr (D == DType::kFloat32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = s[i * stride];
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i)
      dst[i] = D == DType::kBFloat16 ? bf16_to_f32(s[i * stride]) : f16_to_f32(s[i * stride]);
  }
}

// act(x) and, when WithGrad, act'(x).
template <GatedActivation A, bool WithGrad>
FASTATTN_INLINE void activation(float x, float& act, float& grad) {
  if constexpr (A == GatedActivation::kSwiGLU) {
    // s and 1 - s both from e = exp(-x): 1 - s = e * s has no cancellation for x >> 0.
    const float e = exp_f32(-x);
    const float s = 1.0f / (1.0f + e);
    act = x * s;
    if constexpr (WithGrad) grad = s * (1.0f + x * (e * s));
  } else if constexpr (A == GatedActivation::kGeGLU) {
    const float cdf = normal_cdf_f32(x);
    act = x * cdf;
    if constexpr (WithGrad) grad = cdf + x * kInvSqrt2Pi * exp_f32(-0.5f * x * x);
  } else {
    const float x2 = x * x;
    const float u = kSqrt2OverPi * x * (1.0f + kGeluTanhC * x2);
    const float e = exp_f32(-2.0f * u);
    const float s = 1.0f / (1.0f + e);
    act = x * s;
    if constexpr (WithGrad)
      grad = s + 2.0f * x * s * (e * s) * kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhC * x2);
  }
}

template <DType D, GatedActivation A>
FASTATTN_INLINE void fwd_tile(const void* gate, const void* up, void* out, int64_t n) {
  alignas(64) float g[kTile];
  alignas(64) float u[kTile];
  load<D>(gate, g, n);
  load<D>(up, u, n);
  for (int64_t i = 0; i < n; ++i) {
    float act, unused;
    activation<A, false>(g[i], act, unused);
    g[i] = act * u[i];
  }
  store<D>(g, out, n);
}

template <DType D, GatedActivation A>
FASTATTN_INLINE void bwd_tile(const void* dout, const void* gate, const void* up, void* dgate,
                              void* dup, int64_t n) {
  alignas(64) float d[kTile];
  alignas(64) float g[kTile];
  alignas(64) float u[kTile];
  load<D>(dout, d, n);
  load<D>(gate, g, n);
  load<D>(up, u, n);
  for (int64_t i = 0; i < n; ++i) {
    float act, grad;
    activation<A, true>(g[i], act, grad);
    g[i] = d[i] * u[i] * grad;  // dgate
    u[i] = d[i] * act;          // dup
  }
  store<D>(g, dgate, n);
  store<D>(u, dup, n);
}

// The GELU of activation A (kGeGLU: erf, kGeGLUTanh: tanh) at x + bias: forward.
template <DType D, GatedActivation A>
FASTATTN_INLINE void bias_gelu_fwd_tile(const void* x, const void* bias, int64_t stride_bias,
                                        void* out, int64_t n) {
  alignas(64) float v[kTile];
  alignas(64) float b[kTile];
  load<D>(x, v, n);
  load_strided<D>(bias, stride_bias, b, n);
  for (int64_t i = 0; i < n; ++i) {
    float act, unused;
    activation<A, false>(v[i] + b[i], act, unused);
    v[i] = act;
  }
  store<D>(v, out, n);
}

template <DType D, GatedActivation A>
FASTATTN_INLINE void bias_gelu_bwd_tile(const void* dout, const void* x, const void* bias,
                                        int64_t stride_bias, void* dx, int64_t n) {
  alignas(64) float d[kTile];
  alignas(64) float v[kTile];
  alignas(64) float b[kTile];
  load<D>(dout, d, n);
  load<D>(x, v, n);
  load_strided<D>(bias, stride_bias, b, n);
  for (int64_t i = 0; i < n; ++i) {
    float act, grad;
    activation<A, true>(v[i] + b[i], act, grad);
    v[i] = d[i] * grad;
  }
  store<D>(v, dx, n);
}

// X-macros over the instantiated types: X(DT) for each dtype, X(DT, ACT) for each
// (dtype, gated activation) pair.
#define FASTATTN_EACH_DTYPE(X) X(DType::kFloat32) X(DType::kFloat16) X(DType::kBFloat16)
#define FASTATTN_EACH_ACT(X, DT) \
  X(DT, GatedActivation::kSwiGLU) X(DT, GatedActivation::kGeGLU) X(DT, GatedActivation::kGeGLUTanh)
#define FASTATTN_EACH_DTYPE_ACT(X)       \
  FASTATTN_EACH_ACT(X, DType::kFloat32) \
  FASTATTN_EACH_ACT(X, DType::kFloat16) \
  FASTATTN_EACH_ACT(X, DType::kBFloat16)

// The cloned entry points: each clone inlines all (dtype, activation) variants
// with its own ISA. Templates are not cloned directly (GCC's target_clones does not
// support them).
FASTATTN_CPU_CLONES
void fwd_tile_dispatch(DType d, GatedActivation a, const void* gate, const void* up,
                       void* out, int64_t n) {
#define FASTATTN_CASE(DT, ACT) if (d == DT && a == ACT) return fwd_tile<DT, ACT>(gate, up, out, n);
  FASTATTN_EACH_DTYPE_ACT(FASTATTN_CASE)
#undef FASTATTN_CASE
}

FASTATTN_CPU_CLONES
void bwd_tile_dispatch(DType d, GatedActivation a, const void* dout, const void* gate,
                       const void* up, void* dgate, void* dup, int64_t n) {
#define FASTATTN_CASE(DT, ACT) \
  if (d == DT && a == ACT) return bwd_tile<DT, ACT>(dout, gate, up, dgate, dup, n);
  FASTATTN_EACH_DTYPE_ACT(FASTATTN_CASE)
#undef FASTATTN_CASE
}

// The bias-GELU tiles take the GELU of a gated activation code: kGeGLU (erf) or
// kGeGLUTanh.
FASTATTN_CPU_CLONES
void bias_gelu_fwd_dispatch(DType d, bool tanh, const void* x, const void* bias,
                            int64_t stride_bias, void* out, int64_t n) {
  constexpr auto kErf = GatedActivation::kGeGLU;
  constexpr auto kTanh = GatedActivation::kGeGLUTanh;
#define FASTATTN_CASE(DT)                                                    \
  if (d == DT)                                                               \
    return tanh ? bias_gelu_fwd_tile<DT, kTanh>(x, bias, stride_bias, out, n) \
                : bias_gelu_fwd_tile<DT, kErf>(x, bias, stride_bias, out, n);
  FASTATTN_EACH_DTYPE(FASTATTN_CASE)
#undef FASTATTN_CASE
}

FASTATTN_CPU_CLONES
void bias_gelu_bwd_dispatch(DType d, bool tanh, const void* dout, const void* x,
                            const void* bias, int64_t stride_bias, void* dx, int64_t n) {
  constexpr auto kErf = GatedActivation::kGeGLU;
  constexpr auto kTanh = GatedActivation::kGeGLUTanh;
#define FASTATTN_CASE(DT)                                                           \
  if (d == DT)                                                                      \
    return tanh ? bias_gelu_bwd_tile<DT, kTanh>(dout, x, bias, stride_bias, dx, n) \
                : bias_gelu_bwd_tile<DT, kErf>(dout, x, bias, stride_bias, dx, n);
  FASTATTN_EACH_DTYPE(FASTATTN_CASE)
#undef FASTATTN_CASE
}

#undef FASTATTN_EACH_DTYPE_ACT
#undef FASTATTN_EACH_ACT
#undef FASTATTN_EACH_DTYPE

// Byte address of element (row, col) of a row-strided 2-D view.
template <typename P>
P* at(P* base, int64_t row, int64_t col, int64_t row_stride, std::size_t elem) {
  using Byte = std::conditional_t<std::is_const_v<P>, const char, char>;
  return reinterpret_cast<Byte*>(base) + (row * row_stride + col) * static_cast<int64_t>(elem);
}

// The team size of a parallel loop: the caller's count, else the OpenMP default.
int team_size(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

// tile(r, c, n) for every tile (row r, columns c .. c + n - 1, n <= kTile) of a rows x cols
// problem, spread over num_threads (team_size) when it is large enough to pay for them.
template <class Tile>
void for_each_tile(int64_t rows, int64_t cols, int num_threads, const Tile& tile) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("activation kernel: negative rows or cols");
  const int64_t tiles_per_row = (cols + kTile - 1) / kTile;
  const int64_t tiles = rows * tiles_per_row;
  const int nt = team_size(num_threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (rows * cols >= kParallelMinElems)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r = t / tiles_per_row;
    const int64_t c = (t % tiles_per_row) * kTile;
    tile(r, c, std::min(kTile, cols - c));
  }
}

}  // namespace

void gated_act_fwd(const GatedActFwdArgs& a) {
  const std::size_t es = dtype_size(a.dtype);
  for_each_tile(a.rows, a.cols, a.num_threads, [&](int64_t r, int64_t c, int64_t n) {
    fwd_tile_dispatch(a.dtype, a.activation, at(a.gate, r, c, a.stride_gate, es),
                      at(a.up, r, c, a.stride_up, es), at(a.out, r, c, a.stride_out, es), n);
  });
}

void gated_act_bwd(const GatedActBwdArgs& a) {
  const std::size_t es = dtype_size(a.dtype);
  for_each_tile(a.rows, a.cols, a.num_threads, [&](int64_t r, int64_t c, int64_t n) {
    bwd_tile_dispatch(a.dtype, a.activation, at(a.dout, r, c, a.stride_dout, es),
                      at(a.gate, r, c, a.stride_gate, es), at(a.up, r, c, a.stride_up, es),
                      at(a.dgate, r, c, a.stride_dgate, es), at(a.dup, r, c, a.stride_dup, es), n);
  });
}

void bias_gelu_fwd(const BiasGeluFwdArgs& a) {
  const std::size_t es = dtype_size(a.dtype);
  for_each_tile(a.rows, a.cols, a.num_threads, [&](int64_t r, int64_t c, int64_t n) {
    bias_gelu_fwd_dispatch(a.dtype, a.tanh, at(a.x, r, c, a.stride_x, es),
                           at(a.bias, 0, c * a.stride_bias, 0, es), a.stride_bias,
                           at(a.out, r, c, a.stride_out, es), n);
  });
}

void bias_gelu_bwd(const BiasGeluBwdArgs& a) {
  const std::size_t es = dtype_size(a.dtype);
  for_each_tile(a.rows, a.cols, a.num_threads, [&](int64_t r, int64_t c, int64_t n) {
    bias_gelu_bwd_dispatch(a.dtype, a.tanh, at(a.dout, r, c, a.stride_dout, es),
                           at(a.x, r, c, a.stride_x, es), at(a.bias, 0, c * a.stride_bias, 0, es),
                           a.stride_bias, at(a.dx, r, c, a.stride_dx, es), n);
  });
}

}  // namespace fastattn::cpu
