// A block reduction with a deliberately missing __syncthreads(): thread 0 sums the shared
// buffer right after every thread wrote its slot. The numbers usually come out right (the
// threads have typically finished writing), which is exactly why this is checked by
// ThreadSanitizer: built with -fsanitize=thread, running this must report a data race.
// It is never part of the normal test run.
#include <cstdio>
#include <vector>

#include "common/platform.cuh"

namespace {

__global__ void racy_block_sum(const float* in, float* out) {
  __shared__ float buf[128];
  buf[threadIdx.x] = in[threadIdx.x];
  // __syncthreads();  <- missing on purpose
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int i = 0; i < 128; ++i) s += buf[i];
    *out = s;
  }
}

}  // namespace

int main() {
  std::vector<float> in(128, 1.0f);
  float out = 0.0f;
  fastattn::cuda::launch(racy_block_sum, dim3(1), dim3(128), 0, nullptr, in.data(), &out);
  std::printf("sum = %g (128 expected)\n", out);
  return 0;
}
