// Driver of the attention forward's planted-bug variants (csrc/sim/planted.py), and, built
// from the real sources, their control. Runs flash_fwd_kernel<__half, 64, false> on a
// GQA problem with two query blocks and three key tiles (so that every stage of the
// double-buffered cp.async ring is used) and checks it against a float64 reference by
// flash-attn's error-ratio rule. Prints PASS and exits 0, or names the kernel and exits 1;
// the simulator's own checks abort before that when they catch the bug.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "attention/flash_fwd.cuh"

int main() {
  using T = __half;
  const int B = 1, H = 2, Hk = 1, D = 64, lq = 70, lk = 150;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  std::vector<T> q(B * H * lq * D), k(B * Hk * lk * D), v(B * Hk * lk * D);
  for (auto& x : q) x = T(dist(rng));
  for (auto& x : k) x = T(dist(rng));
  for (auto& x : v) x = T(dist(rng));
  std::vector<T> out(q.size(), T(NAN));
  std::vector<float> lse(B * H * lq, NAN);
  fastattn::cuda::AttnFwdParams p;
  p.dtype = 1;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.lse = lse.data();
  const int64_t qs[3] = {int64_t(H) * lq * D, int64_t(lq) * D, D}, ks[3] = {int64_t(Hk) * lk * D, int64_t(lk) * D, D};
  for (int i = 0; i < 3; ++i) p.q_strides[i] = p.o_strides[i] = qs[i], p.k_strides[i] = p.v_strides[i] = ks[i];
  p.batch = B, p.heads = H, p.heads_k = Hk, p.seqlen_q = lq, p.seqlen_k = lk, p.head_dim = D;
  p.scale = 1.0f / std::sqrt(float(D));
  fastattn::cuda::attn::run_flash_fwd<T, 64, false>(p, nullptr);

  double max_err = 0, max_lowp_err = 0;
  int nan = 0;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < lq; ++i) {
      const T* qi = &q[(h * lq + i) * D];
      std::vector<double> s(lk);
      double mx = -INFINITY, l = 0;
      for (int j = 0; j < lk; ++j) {
        double acc = 0;
        for (int d = 0; d < D; ++d) acc += double(float(qi[d])) * double(float(k[j * D + d]));
        s[j] = acc * p.scale;
        mx = std::max(mx, s[j]);
      }
      for (int j = 0; j < lk; ++j) l += std::exp(s[j] - mx);
      for (int d = 0; d < D; ++d) {
        double o64 = 0, olp = 0;
        for (int j = 0; j < lk; ++j) {
          const double pr = std::exp(s[j] - mx) / l;
          o64 += pr * float(v[j * D + d]);
          olp += double(float(T(float(pr)))) * float(v[j * D + d]);
        }
        olp = float(T(float(olp)));
        const float got = float(out[(h * lq + i) * D + d]);
        if (std::isnan(got)) ++nan;
        max_err = std::max(max_err, std::fabs(got - o64));
        max_lowp_err = std::max(max_lowp_err, std::fabs(olp - o64));
      }
    }
  const double bound = 2 * max_lowp_err + 1e-4;
  if (nan > 0 || !(max_err <= bound)) {
    std::printf("FAIL flash_fwd_kernel<__half, 64, false>: %d NaN outputs, max error %g (bound %g)\n", nan, max_err,
                bound);
    return 1;
  }
  std::printf("PASS flash_fwd_kernel<__half, 64, false>: max error %g (bound %g)\n", max_err, bound);
  return 0;
}
