// A small attention problem for the simulator's C++ tests of both directions (test_attention.cpp,
// test_attention_bwd.cpp, the planted-bug drivers planted/planted_attention*.cpp): random
// fp16/bf16 inputs; the forward's out and lse computed in float64 (out rounded to T: the
// backward's input), and in the low precision of flash-attn's error-ratio rule (P rounded to T
// before P V, the output rounded to T); the gradients in float64 and in that low precision (P
// and dS rounded to T before their products, delta from the rounded out, each gradient rounded
// to T). Kernel outputs start poisoned with NaN.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_bwd.h"
#include "attention/bwd_params.h"
#include "common/platform.cuh"

namespace fastattn::simtest {

template <typename T>
struct AttnProblem {
  int B = 1, H = 2, Hk = 1, D = 64, lq = 0, lk = 0;
  bool causal = false, bottom_right = false;
  float scale = 0.125f;
  std::vector<T> q, k, v, out, dout, dq, dk, dv;
  std::vector<float> lse, workspace;
  std::vector<T> fwd_out;      // the forward kernel's out and lse (fwd_params)
  std::vector<float> fwd_lse;

  // head_dim: any multiple of 8 up to 256 (the kernels run the next of 64, 128 and 256).
  AttnProblem(int lq_, int lk_, bool causal_, bool bottom_right_, unsigned seed, int head_dim = 64) {
    lq = lq_, lk = lk_, causal = causal_, bottom_right = bottom_right_, D = head_dim;
    scale = 1.0f / std::sqrt(float(D));
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    q.resize(size_t(B) * H * lq * D), dout.resize(q.size()), out.resize(q.size());
    k.resize(size_t(B) * Hk * lk * D), v.resize(k.size());
    for (auto* t : {&q, &k, &v, &dout})
      for (auto& x : *t) x = T(dist(rng));
    lse.resize(size_t(B) * H * lq);
    std::vector<double> o64;
    forward(o64);
    for (size_t i = 0; i < out.size(); ++i) out[i] = T(float(o64[i]));
  }

  bool visible(int i, int j) const { return !causal || j <= i + (bottom_right ? lk - lq : 0); }
  double score(int h, int i, int j) const {
    const int kh = h / (H / Hk);
    double acc = 0;
    for (int d = 0; d < D; ++d) acc += double(float(q[(h * lq + i) * D + d])) * double(float(k[(kh * lk + j) * D + d]));
    return acc * scale;
  }
  // Probabilities of row i of head h (0 where masked; all 0 for a row that sees no key).
  std::vector<double> probs(int h, int i, double* lse_out) const {
    std::vector<double> s(lk, -INFINITY), pr(lk, 0.0);
    double mx = -INFINITY;
    for (int j = 0; j < lk; ++j)
      if (visible(i, j)) mx = std::max(mx, s[j] = score(h, i, j));
    if (mx == -INFINITY) {
      *lse_out = INFINITY;
      return pr;
    }
    double l = 0;
    for (int j = 0; j < lk; ++j) l += std::exp(s[j] - mx);
    for (int j = 0; j < lk; ++j) pr[j] = std::exp(s[j] - mx) / l;
    *lse_out = mx + std::log(l);
    return pr;
  }
  // The forward's out in float64 (lowp = false) or with the low-precision roundings; sets lse.
  void forward(std::vector<double>& o, bool lowp = false) {
    auto rnd = [&](double x) { return lowp ? double(float(T(float(x)))) : x; };
    o.assign(q.size(), 0.0);
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < lq; ++i) {
        double l;
        const std::vector<double> pr = probs(h, i, &l);
        lse[h * lq + i] = float(l);
        for (int j = 0; j < lk; ++j)
          for (int d = 0; d < D; ++d) o[(h * lq + i) * D + d] += rnd(pr[j]) * float(v[((h / (H / Hk)) * lk + j) * D + d]);
      }
    for (auto& x : o) x = rnd(x);
  }

  // The forward kernel's call (outputs poisoned with NaN).
  cuda::AttnFwdParams fwd_params() {
    fwd_out.assign(q.size(), T(NAN)), fwd_lse.assign(lse.size(), NAN);
    cuda::AttnFwdParams p;
    p.dtype = std::is_same_v<T, __half> ? 1 : 2;  // csrc/common/dtype.h codes
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = fwd_out.data(), p.lse = fwd_lse.data();
    const int64_t qs[3] = {int64_t(H) * lq * D, int64_t(lq) * D, D}, ks[3] = {int64_t(Hk) * lk * D, int64_t(lk) * D, D};
    for (int i = 0; i < 3; ++i) p.q_strides[i] = p.o_strides[i] = qs[i], p.k_strides[i] = p.v_strides[i] = ks[i];
    p.batch = B, p.heads = H, p.heads_k = Hk, p.seqlen_q = lq, p.seqlen_k = lk, p.head_dim = D;
    p.scale = scale, p.causal = causal, p.bottom_right = bottom_right;
    return p;
  }

  // The forward kernel's error over its out, as a ratio to the rule's bound max|out - ref64| <=
  // 2 max|ref_lowp - ref64| + 1e-4 (<= 1 passes; NaN fails); *bad counts NaN outputs, rows that
  // see no key without exactly 0 and lse = +inf, and lse values off by more than 1e-4.
  double fwd_worst_ratio(int* bad) {
    std::vector<double> o64, olp;
    forward(olp, true);
    forward(o64);
    *bad = 0;
    double err = 0, lp = 0;
    for (size_t r = 0; r < lse.size(); ++r) {
      const bool empty = lse[r] == INFINITY;
      if (empty ? fwd_lse[r] != INFINITY : !(std::fabs(fwd_lse[r] - lse[r]) <= 1e-4)) ++*bad;
      for (size_t i = r * D; i < (r + 1) * D; ++i) {
        const double got = float(fwd_out[i]);
        if (std::isnan(got) || (empty && got != 0.0)) ++*bad;
        err = std::max(err, std::fabs(got - o64[i]));
        lp = std::max(lp, std::fabs(olp[i] - o64[i]));
      }
    }
    return err / (2 * lp + 1e-4);
  }

  // Gradients in float64 (lowp = false) or with the low-precision roundings (lowp = true).
  void reference(bool lowp, std::vector<double>& gq, std::vector<double>& gk, std::vector<double>& gv) const {
    auto rnd = [&](double x) { return lowp ? double(float(T(float(x)))) : x; };
    gq.assign(q.size(), 0.0), gk.assign(k.size(), 0.0), gv.assign(v.size(), 0.0);
    std::vector<double> o64;
    if (!lowp) const_cast<AttnProblem*>(this)->forward(o64);
    for (int h = 0; h < H; ++h) {
      const int kh = h / (H / Hk);
      for (int i = 0; i < lq; ++i) {
        double l;
        const std::vector<double> pr = probs(h, i, &l);
        const size_t qi = size_t(h * lq + i) * D;
        double delta = 0;
        for (int d = 0; d < D; ++d) delta += float(dout[qi + d]) * (lowp ? double(float(out[qi + d])) : o64[qi + d]);
        for (int j = 0; j < lk; ++j) {
          if (pr[j] == 0.0) continue;
          const size_t kj = size_t(kh * lk + j) * D;
          double dp = 0;
          for (int d = 0; d < D; ++d) dp += double(float(dout[qi + d])) * float(v[kj + d]);
          const double p = rnd(pr[j]), ds = rnd(pr[j] * (dp - delta));
          for (int d = 0; d < D; ++d) {
            gv[kj + d] += p * float(dout[qi + d]);
            gk[kj + d] += scale * ds * float(q[qi + d]);
            gq[qi + d] += scale * ds * float(k[kj + d]);
          }
        }
      }
    }
    for (auto* g : {&gq, &gk, &gv})
      for (auto& x : *g) x = rnd(x);
  }

  // The backward kernel's call, outputs and workspace poisoned with NaN.
  cuda::AttnBwdParams bwd_params(bool deterministic) {
    dq.assign(q.size(), T(NAN)), dk.assign(k.size(), T(NAN)), dv.assign(v.size(), T(NAN));
    cuda::AttnBwdParams p;
    p.dtype = std::is_same_v<T, __half> ? 1 : 2;  // csrc/common/dtype.h codes
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data(), p.dout = dout.data(), p.lse = lse.data();
    p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
    const int64_t qs[3] = {int64_t(H) * lq * D, int64_t(lq) * D, D}, ks[3] = {int64_t(Hk) * lk * D, int64_t(lk) * D, D};
    for (int i = 0; i < 3; ++i) {
      p.q_strides[i] = p.o_strides[i] = p.do_strides[i] = p.dq_strides[i] = qs[i];
      p.k_strides[i] = p.v_strides[i] = p.dk_strides[i] = p.dv_strides[i] = ks[i];
    }
    p.batch = B, p.heads = H, p.heads_k = Hk, p.seqlen_q = lq, p.seqlen_k = lk, p.head_dim = D;
    p.scale = scale, p.causal = causal, p.bottom_right = bottom_right, p.deterministic = deterministic;
    workspace.assign(size_t(cuda::attn::bwd_workspace_floats(p)) + 4, NAN);
    // 16-byte aligned start (the vector's storage is only guaranteed 8-byte aligned).
    float* ws = workspace.data();
    while (reinterpret_cast<std::uintptr_t>(ws) % 16) ++ws;
    p.workspace = ws;
    return p;
  }

  // Worst ratio over dq, dk, dv of |got - ref64| to the rule's bound (<= 1 passes; NaN fails).
  double bwd_worst_ratio(int* nan_count) const {
    std::vector<double> r64[3], rlp[3];
    reference(false, r64[0], r64[1], r64[2]);
    reference(true, rlp[0], rlp[1], rlp[2]);
    const std::vector<T>* got[3] = {&dq, &dk, &dv};
    const double eps = std::is_same_v<T, __half> ? 0x1p-10 : 0x1p-7;
    double worst = 0;
    *nan_count = 0;
    for (int t = 0; t < 3; ++t) {
      double err = 0, lp = 0, mx = 0;
      for (size_t i = 0; i < r64[t].size(); ++i) {
        const double g = float((*got[t])[i]);
        if (std::isnan(g)) ++*nan_count;
        err = std::max(err, std::fabs(g - r64[t][i]));
        lp = std::max(lp, std::fabs(rlp[t][i] - r64[t][i]));
        mx = std::max(mx, std::fabs(r64[t][i]));
      }
      worst = std::max(worst, err / (2 * lp + eps / 2 * mx + 1e-4 * std::max(1.0, mx)));
    }
    return worst;
  }
};

}  // namespace fastattn::simtest
