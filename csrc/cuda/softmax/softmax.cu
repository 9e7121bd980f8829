// Launchers of the scale-mask-softmax kernels: one block per row, one thread per
// kChunksPerThread 16-byte chunks of the row (a multiple of 32 threads, at most
// kSoftmaxMaxThreads), the forward's row buffer in dynamic shared memory.
#include <stdexcept>

#include "../common/dispatch.h"
#include "scaled_masked_softmax.cuh"
#include "softmax.h"

namespace fastattn::cuda {
namespace {

// Several 16-byte accesses in flight per thread hide latency as well as more threads
// would, and keep short rows from spending most of a block on idle warps.
constexpr int64_t kChunksPerThread = 4;

unsigned softmax_threads(int64_t seqlen_k, int vec) {
  const int64_t chunks = (seqlen_k + vec - 1) / vec;
  int64_t threads = (chunks + 32 * kChunksPerThread - 1) / (32 * kChunksPerThread) * 32;
  if (threads > kSoftmaxMaxThreads) threads = kSoftmaxMaxThreads;
  return static_cast<unsigned>(threads < 32 ? 32 : threads);
}

}  // namespace

void scaled_masked_softmax_fwd(int dtype, const void* x, Strides4 x_strides, void* y, Strides4 y_strides,
                               const void* mask, int mask_kind, Strides4 mask_strides, int64_t batch,
                               int64_t heads, int64_t seqlen_q, int64_t seqlen_k, float scale, bool causal,
                               void* stream) {
  const int64_t rows = batch * heads * seqlen_q;
  if (rows == 0 || seqlen_k == 0) return;
  if (seqlen_k > kSoftmaxMaxRow) throw std::invalid_argument("scaled_masked_softmax: row longer than 16384");
  if (rows > 0x7fffffffLL) throw std::invalid_argument("scaled_masked_softmax: more than 2^31 - 1 rows");
  const size_t smem = static_cast<size_t>((seqlen_k + 3) / 4 * 4) * sizeof(float);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto kernel = scaled_masked_softmax_fwd_kernel<T>;
    set_max_dynamic_smem(kernel, smem);
    launch(kernel, dim3(static_cast<unsigned>(rows)), dim3(softmax_threads(seqlen_k, kVec16<T>)), smem,
           static_cast<cudaStream_t>(stream), static_cast<const T*>(x), x_strides, static_cast<T*>(y), y_strides,
           mask, mask_kind, mask_strides, static_cast<long long>(heads), static_cast<long long>(seqlen_q),
           static_cast<long long>(seqlen_k), scale, causal);
  });
}

void scaled_masked_softmax_bwd(int dtype, const void* dy, Strides4 dy_strides, const void* y, Strides4 y_strides,
                               void* dx, Strides4 dx_strides, int64_t batch, int64_t heads, int64_t seqlen_q,
                               int64_t seqlen_k, float scale, void* stream) {
  const int64_t rows = batch * heads * seqlen_q;
  if (rows == 0 || seqlen_k == 0) return;
  if (rows > 0x7fffffffLL) throw std::invalid_argument("scaled_masked_softmax: more than 2^31 - 1 rows");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(scaled_masked_softmax_bwd_kernel<T>, dim3(static_cast<unsigned>(rows)),
           dim3(softmax_threads(seqlen_k, kVec16<T>)), 0, static_cast<cudaStream_t>(stream),
           static_cast<const T*>(dy), dy_strides, static_cast<const T*>(y), y_strides, static_cast<T*>(dx),
           dx_strides, static_cast<long long>(heads), static_cast<long long>(seqlen_q),
           static_cast<long long>(seqlen_k), scale);
  });
}

}  // namespace fastattn::cuda
