// The tensor-core attention forward (csrc/cuda/attention) in the host SIMT build: a small GQA
// case per (dtype, causal alignment) against a float64 reference, by flash-attn's error-ratio
// rule (max|out - ref64| <= 2 max|ref_lowp - ref64| + floor, ref_lowp rounding the
// probabilities and the output to the input type as a low-precision kernel must). Its main
// job is the ThreadSanitizer run (run_sim_tests.py --tsan): two query blocks and several key
// tiles exercise the double-buffered cp.async ring and every __syncthreads() of the kernel.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attention/attention.h"
#include "check.h"
#include "common/platform.cuh"

namespace {

template <typename T>
void check_attention(int dtype, bool causal, bool bottom_right, int lq, int lk, const char* name) {
  const int B = 1, H = 2, Hk = 1, D = 64;
  std::mt19937 rng(lq * 131 + lk);
  std::normal_distribution<float> dist;
  std::vector<T> q(B * H * lq * D), k(B * Hk * lk * D), v(B * Hk * lk * D);
  for (auto& x : q) x = T(dist(rng));
  for (auto& x : k) x = T(dist(rng));
  for (auto& x : v) x = T(dist(rng));
  std::vector<T> out(q.size(), T(NAN));
  std::vector<float> lse(B * H * lq, NAN);
  fastattn::cuda::AttnFwdParams p;
  p.dtype = dtype;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  const int64_t qs[3] = {int64_t(H) * lq * D, int64_t(lq) * D, D}, ks[3] = {int64_t(Hk) * lk * D, int64_t(lk) * D, D};
  for (int i = 0; i < 3; ++i) p.q_strides[i] = p.o_strides[i] = qs[i], p.k_strides[i] = p.v_strides[i] = ks[i];
  p.batch = B, p.heads = H, p.heads_k = Hk, p.seqlen_q = lq, p.seqlen_k = lk, p.head_dim = D;
  p.scale = 1.0f / std::sqrt(float(D));
  p.causal = causal, p.bottom_right = bottom_right;
  fastattn::cuda::attention_fwd(p, nullptr);

  const int off = causal && bottom_right ? lk - lq : 0;
  double max_err = 0, max_lowp_err = 0, max_lse_err = 0;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < lq; ++i) {
      const T* qi = &q[(h * lq + i) * D];
      const T* kh = &k[(h / (H / Hk)) * lk * D];
      const T* vh = &v[(h / (H / Hk)) * lk * D];
      std::vector<double> s(lk, -INFINITY);
      double mx = -INFINITY;
      for (int j = 0; j < lk; ++j) {
        if (causal && j > i + off) continue;
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += double(float(qi[d])) * double(float(kh[j * D + d]));
        s[j] = acc * p.scale;
        mx = std::max(mx, s[j]);
      }
      const float got_lse = lse[h * lq + i];
      if (mx == -INFINITY) {  // sees no key: 0 and +inf
        FA_CHECK(got_lse == INFINITY, "%s row %d: lse %f, want +inf", name, i, got_lse);
        for (int d = 0; d < D; ++d) FA_CHECK(float(out[(h * lq + i) * D + d]) == 0.0f, "%s row %d: nonzero", name, i);
        continue;
      }
      double l = 0;
      for (int j = 0; j < lk; ++j) l += std::exp(s[j] - mx);
      max_lse_err = std::max(max_lse_err, std::fabs(got_lse - (mx + std::log(l))));
      for (int d = 0; d < D; ++d) {
        double o64 = 0, olp = 0;
        for (int j = 0; j < lk; ++j) {
          const double pr = std::exp(s[j] - mx) / l;
          o64 += pr * float(vh[j * D + d]);
          olp += double(float(T(float(pr)))) * float(vh[j * D + d]);
        }
        olp = float(T(float(olp)));
        const float got = float(out[(h * lq + i) * D + d]);
        FA_CHECK(!std::isnan(got), "%s out[%d][%d] is NaN", name, i, d);
        max_err = std::max(max_err, std::fabs(got - o64));
        max_lowp_err = std::max(max_lowp_err, std::fabs(olp - o64));
      }
    }
  FA_CHECK(max_err <= 2 * max_lowp_err + 1e-4, "%s: max error %g > 2 * %g + 1e-4", name, max_err, max_lowp_err);
  FA_CHECK(max_lse_err <= 1e-4, "%s: lse error %g", name, max_lse_err);
}

FA_TEST(attention_fwd_fp16_noncausal) { check_attention<__half>(1, false, false, 70, 150, "fp16 full"); }
FA_TEST(attention_fwd_bf16_causal_top_left) { check_attention<__nv_bfloat16>(2, true, false, 70, 150, "bf16 tl"); }
FA_TEST(attention_fwd_fp16_causal_bottom_right) { check_attention<__half>(1, true, true, 130, 70, "fp16 br"); }

}  // namespace
