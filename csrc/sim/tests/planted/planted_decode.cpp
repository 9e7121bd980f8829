// Driver of the split-KV decoding kernel's planted-bug variants (csrc/sim/planted.py), and,
// built from the real sources, their control. One query row, six keys (five cached, one
// appended), three splits of two keys: fewer keys per split than the kernel has warps, so
// some warps get no key. Checks out and lse against float64 loops. Prints PASS and exits 0,
// or names the kernel (and whether NaN, the simulator's poison, reached the output) and
// exits 1.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "decode/decode.cu"

int main() {
  namespace fc = fastattn::cuda;
  const int D = 32, Lc = 8, cached = 5, splits = 3;
  std::mt19937 rng(11);
  std::normal_distribution<float> dist;
  auto randn = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
  };
  const auto q = randn(D), kn = randn(D), vn = randn(D);
  auto kc = randn(Lc * D), vc = randn(Lc * D);
  const std::vector<int> lens = {cached};
  std::vector<float> out(D, -1.0f), lse(1, -1.0f), o_part(splits * D, -1.0f), lse_part(splits, -1.0f);
  fc::KvDecodeParams p;
  p.dtype = 0;
  p.q = q.data();
  p.q_strides[0] = p.q_strides[1] = p.q_strides[2] = D;
  p.k_cache = kc.data(), p.v_cache = vc.data();
  p.k_strides[0] = p.v_strides[0] = Lc * D, p.k_strides[1] = p.v_strides[1] = D, p.k_strides[2] = p.v_strides[2] = D;
  p.k_new = kn.data(), p.v_new = vn.data();
  p.kn_strides[0] = p.vn_strides[0] = D, p.kn_strides[1] = p.vn_strides[1] = D, p.kn_strides[2] = p.vn_strides[2] = D;
  p.cache_seqlens = lens.data();
  p.out = out.data(), p.lse = lse.data(), p.o_partial = o_part.data(), p.lse_partial = lse_part.data();
  p.batch = 1, p.seqlen_q = 1, p.heads = 1, p.heads_k = 1, p.head_dim = p.head_dim_v = D;
  p.seqlen_new = 1, p.max_seqlen_k = Lc, p.num_splits = splits;
  p.scale = 1.0f / std::sqrt(static_cast<float>(D)), p.causal = true;
  fc::split_kv_decode(p, nullptr);

  const int n = cached + 1;
  std::vector<double> s(n);
  double m = -INFINITY, sum = 0;
  for (int j = 0; j < n; ++j) {
    const float* krow = j < cached ? &kc[j * D] : kn.data();
    double dot = 0;
    for (int d = 0; d < D; ++d) dot += double(q[d]) * krow[d];
    s[j] = dot * p.scale;
    m = std::max(m, s[j]);
  }
  for (int j = 0; j < n; ++j) sum += std::exp(s[j] - m);
  double max_err = std::fabs(lse[0] - (m + std::log(sum)));
  int nan = std::isnan(lse[0]) ? 1 : 0;
  for (int d = 0; d < D; ++d) {
    double o = 0;
    for (int j = 0; j < n; ++j) o += std::exp(s[j] - m) / sum * (j < cached ? vc[j * D + d] : vn[d]);
    if (std::isnan(out[d])) ++nan;
    max_err = std::max(max_err, std::fabs(out[d] - o));
  }
  if (nan > 0 || !(max_err < 1e-5)) {
    std::printf("FAIL split_kv_decode_kernel<float>: %d NaN outputs%s, max error %g\n", nan,
                nan ? " (a read of shared memory never written in its block)" : "", max_err);
    return 1;
  }
  std::printf("PASS split_kv_decode_kernel<float>: max error %g\n", max_err);
  return 0;
}
