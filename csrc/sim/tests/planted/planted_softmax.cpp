// Driver of the scale-mask-softmax kernel's planted-bug variants (csrc/sim/planted.py), and,
// built from the real sources, their control. fp32 rows of 301 columns, held in buffers of
// exactly their size (so that AddressSanitizer sees any read past the end):
//   misaligned  two rows: the second starts 1204 bytes in, not on a 16-byte boundary;
//   tail        one row: its last chunk holds one column, not four.
// Checks against float64 softmax. Prints PASS and exits 0, or names the kernel and exits 1.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "softmax/softmax.cu"

int main(int argc, char** argv) {
  namespace fc = fastattn::cuda;
  const bool misaligned = argc > 1 && std::strcmp(argv[1], "misaligned") == 0;
  const int64_t rows = misaligned ? 2 : 1, cols = 301;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(rows * cols), y(rows * cols, NAN);
  for (auto& v : x) v = dist(rng);
  const fc::Strides4 s{rows * cols, rows * cols, cols, 1}, none{0, 0, 0, 0};
  fc::scaled_masked_softmax_fwd(0, x.data(), s, y.data(), s, nullptr, static_cast<int>(fc::SoftmaxMask::kNone), none,
                                1, 1, rows, cols, 0.5f, false, nullptr);
  double max_err = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double m = -INFINITY, sum = 0;
    for (int64_t k = 0; k < cols; ++k) m = std::max(m, 0.5 * x[r * cols + k]);
    for (int64_t k = 0; k < cols; ++k) sum += std::exp(0.5 * x[r * cols + k] - m);
    for (int64_t k = 0; k < cols; ++k) {
      const double want = std::exp(0.5 * x[r * cols + k] - m) / sum;
      const double err = std::fabs(y[r * cols + k] - want);
      max_err = std::isnan(err) ? INFINITY : std::max(max_err, err);
    }
  }
  if (!(max_err < 1e-6)) {
    std::printf("FAIL scaled_masked_softmax_fwd_kernel<float>: max error %g\n", max_err);
    return 1;
  }
  std::printf("PASS scaled_masked_softmax_fwd_kernel<float>: max error %g\n", max_err);
  return 0;
}
