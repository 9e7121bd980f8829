// Every csrc/cuda kernel family run through the host SIMT runtime on small ragged inputs,
// against double-precision loops. These exist so that the ThreadSanitizer build exercises
// every kernel's shared memory and barriers; the full numerical sweep against
// fastattn.reference is in tests/test_cuda_*.py.
#include <cmath>
#include <random>
#include <vector>

#include "../../common/dtype.h"
#include "activations/activations.h"
#include "check.h"
#include "decode/decode.h"
#include "softmax/softmax.h"

namespace fc = fastattn::cuda;

namespace {

std::vector<float> randn(size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return std::isnan(m) ? INFINITY : m;
}

FA_TEST(kernel_gated_activations) {
  const int64_t rows = 3, cols = 37;  // ragged: not a multiple of the 4-float vector
  const auto gate = randn(rows * cols, 1, 2.0f), up = randn(rows * cols, 2), dout = randn(rows * cols, 3);
  std::vector<float> out(rows * cols, NAN), dgate(rows * cols, NAN), dup(rows * cols, NAN);
  fc::gated_act_fwd(0, 0, gate.data(), up.data(), out.data(), rows, cols, cols, cols, cols, nullptr);
  fc::gated_act_bwd(0, 0, dout.data(), gate.data(), up.data(), dgate.data(), dup.data(), rows, cols, cols, cols,
                    cols, cols, cols, nullptr);
  std::vector<double> r(rows * cols), rg(rows * cols), ru(rows * cols);
  for (size_t i = 0; i < r.size(); ++i) {
    const double g = gate[i], s = 1.0 / (1.0 + std::exp(-g));
    r[i] = g * s * up[i];
    ru[i] = dout[i] * g * s;
    rg[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
  }
  FA_CHECK(max_abs_diff(out, r) < 1e-5, "swiglu fwd %g", max_abs_diff(out, r));
  FA_CHECK(max_abs_diff(dgate, rg) < 1e-5, "swiglu dgate %g", max_abs_diff(dgate, rg));
  FA_CHECK(max_abs_diff(dup, ru) < 1e-5, "swiglu dup %g", max_abs_diff(dup, ru));
}

FA_TEST(kernel_bias_gelu) {
  const int64_t rows = 5, cols = 64;
  const auto x = randn(rows * cols, 4, 2.0f), bias = randn(cols, 5), dout = randn(rows * cols, 6);
  std::vector<float> out(rows * cols, NAN), dx(rows * cols, NAN);
  fc::bias_gelu_fwd(0, false, x.data(), bias.data(), out.data(), rows, cols, cols, cols, nullptr);
  fc::bias_gelu_bwd(0, false, dout.data(), x.data(), bias.data(), dx.data(), rows, cols, cols, cols, cols, nullptr);
  std::vector<double> r(rows * cols), rd(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const double v = static_cast<double>(x[i]) + bias[i % cols];
    const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
    r[i] = v * cdf;
    rd[i] = dout[i] * (cdf + v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI));
  }
  FA_CHECK(max_abs_diff(out, r) < 1e-5, "bias_gelu fwd %g", max_abs_diff(out, r));
  FA_CHECK(max_abs_diff(dx, rd) < 1e-5, "bias_gelu bwd %g", max_abs_diff(dx, rd));
}

FA_TEST(kernel_scaled_masked_softmax) {
  const int64_t B = 2, H = 1, Lq = 3, Lk = 300;  // 300 columns: more than one chunk per thread
  const auto x = randn(B * H * Lq * Lk, 7, 3.0f), dy = randn(B * H * Lq * Lk, 8);
  std::vector<unsigned char> mask(B * Lk, 0);  // (B, 1, 1, Lk) padding mask, broadcast over q
  for (int64_t k = 200; k < Lk; ++k) mask[1 * Lk + k] = 1;
  std::vector<float> y(x.size(), NAN), dx(x.size(), NAN);
  const fc::Strides4 xs{H * Lq * Lk, Lq * Lk, Lk, 1}, ms{Lk, 0, 0, 1};
  const float scale = 0.5f;
  fc::scaled_masked_softmax_fwd(0, x.data(), xs, y.data(), xs, mask.data(),
                                static_cast<int>(fc::SoftmaxMask::kBool), ms, B, H, Lq, Lk, scale, true, nullptr);
  fc::scaled_masked_softmax_bwd(0, dy.data(), xs, y.data(), xs, dx.data(), xs, B, H, Lq, Lk, scale, nullptr);
  std::vector<double> ry(x.size()), rdx(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < Lq; ++q) {
      const int64_t base = (b * Lq + q) * Lk;
      double m = -INFINITY, sum = 0, dot = 0;
      auto visible = [&](int64_t k) { return k <= q && !mask[b * Lk + k]; };
      for (int64_t k = 0; k < Lk; ++k)
        if (visible(k)) m = std::max(m, scale * static_cast<double>(x[base + k]));
      for (int64_t k = 0; k < Lk; ++k) sum += visible(k) ? std::exp(scale * x[base + k] - m) : 0.0;
      for (int64_t k = 0; k < Lk; ++k) ry[base + k] = visible(k) ? std::exp(scale * x[base + k] - m) / sum : 0.0;
      for (int64_t k = 0; k < Lk; ++k) dot += static_cast<double>(dy[base + k]) * y[base + k];
      for (int64_t k = 0; k < Lk; ++k) rdx[base + k] = scale * y[base + k] * (dy[base + k] - dot);
    }
  FA_CHECK(max_abs_diff(y, ry) < 1e-6, "softmax fwd %g", max_abs_diff(y, ry));
  FA_CHECK(max_abs_diff(dx, rdx) < 1e-5, "softmax bwd %g", max_abs_diff(dx, rdx));
}

FA_TEST(kernel_split_kv_decode) {
  // GQA 4 -> 2 heads, d = 24, one new token appended to ragged caches, causal, 3 splits.
  const int64_t B = 2, Hq = 4, Hk = 2, D = 24, Lc = 70, Lnew = 1;
  const std::vector<int> lens = {0, 61};
  const auto q = randn(B * Hq * D, 9);
  auto kc = randn(B * Lc * Hk * D, 10), vc = randn(B * Lc * Hk * D, 11);
  const auto kn = randn(B * Lnew * Hk * D, 12), vn = randn(B * Lnew * Hk * D, 13);
  const int splits = 3;
  std::vector<float> out(B * Hq * D, NAN), lse(B * Hq, NAN), o_part(splits * B * Hq * D, NAN),
      lse_part(splits * B * Hq, NAN);
  fc::KvDecodeParams p;
  p.dtype = 0;
  p.q = q.data();
  p.q_strides[0] = Hq * D, p.q_strides[1] = Hq * D, p.q_strides[2] = D;
  p.k_cache = kc.data(), p.v_cache = vc.data();
  p.k_strides[0] = p.v_strides[0] = Lc * Hk * D, p.k_strides[1] = p.v_strides[1] = Hk * D;
  p.k_strides[2] = p.v_strides[2] = D;
  p.k_new = kn.data(), p.v_new = vn.data();
  p.kn_strides[0] = p.vn_strides[0] = Lnew * Hk * D, p.kn_strides[1] = p.vn_strides[1] = Hk * D;
  p.kn_strides[2] = p.vn_strides[2] = D;
  p.cache_seqlens = lens.data();
  p.out = out.data(), p.lse = lse.data(), p.o_partial = o_part.data(), p.lse_partial = lse_part.data();
  p.batch = B, p.seqlen_q = 1, p.heads = Hq, p.heads_k = Hk, p.head_dim = p.head_dim_v = D;
  p.seqlen_new = Lnew, p.max_seqlen_k = Lc, p.num_splits = splits;
  p.scale = 1.0f / std::sqrt(static_cast<float>(D)), p.causal = true;
  fc::split_kv_decode(p, nullptr);

  std::vector<double> ref(out.size());
  std::vector<double> ref_lse(lse.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / (Hq / Hk), n = lens[b] + Lnew;
      std::vector<double> s(n);
      double m = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        const float* krow = (j < lens[b]) ? &kc[((b * Lc + j) * Hk + hk) * D] : &kn[((b * Lnew + j - lens[b]) * Hk + hk) * D];
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(q[(b * Hq + h) * D + d]) * krow[d];
        s[j] = dot * p.scale;
        m = std::max(m, s[j]);
      }
      for (int64_t j = 0; j < n; ++j) sum += std::exp(s[j] - m);
      ref_lse[b * Hq + h] = m + std::log(sum);
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < n; ++j) {
          const float* vrow = (j < lens[b]) ? &vc[((b * Lc + j) * Hk + hk) * D] : &vn[((b * Lnew + j - lens[b]) * Hk + hk) * D];
          o += std::exp(s[j] - m) / sum * vrow[d];
        }
        ref[(b * Hq + h) * D + d] = o;
      }
    }
  FA_CHECK(max_abs_diff(out, ref) < 1e-5, "decode out %g", max_abs_diff(out, ref));
  FA_CHECK(max_abs_diff(lse, ref_lse) < 1e-5, "decode lse %g", max_abs_diff(lse, ref_lse));
  for (int64_t d = 0; d < D; ++d)  // the appended token landed in the cache
    FA_CHECK(kc[((1 * Lc + 61) * Hk + 1) * D + d] == kn[((1 * Lnew) * Hk + 1) * D + d], "append d=%lld",
             static_cast<long long>(d));
}

}  // namespace
