// Launchers of split-KV decoding: append, split kernel, combine (split_kv.cuh).
#include <stdexcept>

#include "../common/dispatch.h"
#include "decode.h"
#include "split_kv.cuh"

namespace fastattn::cuda {

int split_kv_num_splits(int64_t batch, int64_t seqlen_q, int64_t heads, int64_t max_seqlen_k) {
  if (max_seqlen_k <= 0) return 1;
  const int64_t rows = batch * seqlen_q * heads;
  // At least enough splits to keep each within the shared-memory score buffer.
  const int64_t needed = (max_seqlen_k + kMaxSplitKeys - 1) / kMaxSplitKeys;
  // Enough blocks for ~2 waves on a 132-SM GPU, but no split under 256 keys (below that the
  // combine costs more than the parallelism gains).
  const int64_t for_occupancy = (2 * 132 + rows - 1) / (rows > 0 ? rows : 1);
  const int64_t by_length = (max_seqlen_k + 255) / 256;
  int64_t splits = for_occupancy < by_length ? for_occupancy : by_length;
  if (splits < needed) splits = needed;
  if (splits > 65535) throw std::invalid_argument("split_kv_decode: KV cache too long");
  return static_cast<int>(splits < 1 ? 1 : splits);
}

void split_kv_decode(const KvDecodeParams& p, void* stream) {
  const int64_t rows = p.batch * p.seqlen_q * p.heads;
  if (p.head_dim > kMaxDecodeHeadDim || p.head_dim_v > kMaxDecodeHeadDim)
    throw std::invalid_argument("split_kv_decode: head dim over 256");
  if ((p.max_seqlen_k + p.num_splits - 1) / p.num_splits > kMaxSplitKeys)
    throw std::invalid_argument("split_kv_decode: too few splits for the cache length");
  if (rows > 0x7fffffffLL) throw std::invalid_argument("split_kv_decode: too many query rows");
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.k_new != nullptr && p.seqlen_new > 0)
      launch(kvcache_append_kernel<T>, dim3(static_cast<unsigned>(p.batch * p.seqlen_new * p.heads_k)),
             dim3(kDecodeThreads), 0, s, p);
    if (rows == 0) return;
    launch(split_kv_decode_kernel<T>, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(p.num_splits)),
           dim3(kDecodeThreads), 0, s, p);
    launch(split_kv_combine_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kDecodeThreads), 0, s, p);
  });
}

}  // namespace fastattn::cuda
