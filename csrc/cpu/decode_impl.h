// CPU attention for decoding against a KV cache: a few query rows per sequence, keys and
// values read straight from the cache layout, written once and compiled per instruction
// set. A translation unit includes this file after its system headers and a
// `#pragma GCC target(...)`, having defined FA_ISA (namespace) and FA_VEC_BITS (512/256).
// As in attention_impl.h, nothing here may use the C++ standard library's inline
// templates (a copy compiled for one target could be merged with another's).
//
// Why not the forward kernel: it packs every key block (K transposed, V widened) before
// using it, which pays off over 64 query rows but is most of the time for one. Here each
// unit of work is (sequence, kv head, range of keys), and every query row that attends
// to that kv head (the GQA group times the query rows) is served by one pass over the
// range:
//   S[r][j] = q_r . k_j    W keys at a time: W vector accumulators (one per key) over
//                          the head dim, then one transpose-and-add tree turns them into
//                          the W scores (no per-key horizontal sum);
//   online softmax per row in the log2 domain (scale * log2 e folded into q);
//   O[r] += P[r][j] v_j    register-blocked over rows x head-dim vectors, v_j broadcast
//                          from the cache row.
// The key range of a (sequence, kv head) is split into several units when there are too
// few of them to keep the threads busy (split-KV), and where a cache row holds several wide
// kv heads into ranges of at most kLocalityKeys keys on any thread count, the units of a
// sequence ordered by key range, then kv head: one head's rows then lie up to a page apart,
// where the hardware's streaming prefetchers stop; the next units read the same rows (pages)
// again while they are hot. A split unit leaves (max, sum, unnormalised O) per row, and a
// second pass merges them by their log-sum-exp.

namespace fastattn::cpu::FA_ISA {
namespace {

#include "impl_common.h"

// Keys scored before their softmax and P V: a row of S is kChunk floats (in L1), the
// V rows of a chunk (kChunk x Dv) stay in L2 for the second row block of a wide group.
constexpr int64_t kChunk = 256;
// Below this many keys a unit is not split further: the merge and the per-unit setup
// (q rows, buffers) would cost more than the parallelism gains.
constexpr int64_t kMinSplit = 512;
constexpr int64_t kMinParallelBytes = 256 << 10;  // K/V bytes below which one thread decodes
// Keys of a range read by every kv head in turn (8 heads x d128 fp32: 8 MiB of K and V, in L3;
// benchmarks/RESULTS.md has the measurement).
constexpr int64_t kLocalityKeys = 1024;
// Below this row stride (bytes) a head's keys are read nearly in sequence and the hardware
// prefetchers keep up: a heads-first cache (rows of one head adjacent), or few narrow heads.
constexpr int64_t kLocalityStride = 1024;

// ---------------------------------------------------------------- vector loads

// W elements of dtype DT at p (contiguous) as fp32 lanes; bf16/fp16 widened in registers.
// load_part reads only the first n < W elements (the rest are 0): the head-dim tail.
#if FA_VEC_BITS == 512
template <int DT>
FA_INLINE R load_full(const void* p) {
  if constexpr (DT == kF32) return _mm512_loadu_ps(p);
  else if constexpr (DT == kF16) return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  else
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p))), 16));
}
template <int DT>
FA_INLINE R load_part(const void* p, int n) {
  const __mmask16 k = (__mmask16)((1u << n) - 1u);
  if constexpr (DT == kF32) return _mm512_maskz_loadu_ps(k, p);
  else if constexpr (DT == kF16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
  else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}
// Lane l of the result is the sum of the lanes of v[sigma(l)], sigma(l) = 4 (l % 4) + l / 4
// (a 4 x 4 transpose, its own inverse): callers put key j in slot sigma(j) to get the
// scores in key order.
FA_INLINE int slot_of(int j) { return 4 * (j % 4) + j / 4; }
FA_INLINE R reduce_lanes(const R* v) {
  R c[8], d[4], e[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    e[i] = _mm512_add_ps(_mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(d[2 * i], d[2 * i + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(e[0], e[1], 0x88), _mm512_shuffle_ps(e[0], e[1], 0xDD));
}
#else
template <int DT>
FA_INLINE R load_full(const void* p) {
  if constexpr (DT == kF32) return _mm256_loadu_ps(static_cast<const float*>(p));
  else if constexpr (DT == kF16) return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  else
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p))), 16));
}
template <int DT>
FA_INLINE R load_part(const void* p, int n) {
  if constexpr (DT == kF32) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(static_cast<const float*>(p), _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx));
  } else {
    // AVX2 has no 16-bit masked load: the (rare) odd-sized tail goes through the stack.
    alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n; ++i) buf[i] = static_cast<const uint16_t*>(p)[i];
    return load_full<DT>(buf);
  }
}
// Lane l of the result is the sum of the lanes of v[l] (hadd pairs, then the two halves).
FA_INLINE int slot_of(int j) { return j; }
FA_INLINE R reduce_lanes(const R* v) {
  const R t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const R t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const R u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
#endif

// ---------------------------------------------------------------- problem geometry

struct Dec {
  int64_t B, Hq, Hk, group, Lq, rows, D, Dv, Dp, Dvp, nvd, nvdv;
  int64_t wl, wr;  // window, -1 = unbounded; causal folded into wr = 0 (bottom-right)
  bool generic;    // softcap or ALiBi: the per-element score transform
  float qscale;    // folded into q: scale * log2 e (plain) or scale (generic)
};

// Visible keys of row i in a sequence of n keys: [lo, hi] (empty when lo > hi).
FA_INLINE void row_range(const Dec& g, int64_t n, int64_t i, int64_t* lo, int64_t* hi) {
  const int64_t off = n - g.Lq;
  *lo = g.wl >= 0 ? imax(0, i + off - g.wl) : 0;
  *hi = g.wr >= 0 ? imin(n - 1, i + off + g.wr) : n - 1;
}

// ---------------------------------------------------------------- scores

// S[0..W) = q . k_j for the W keys j0 .. j0 + W - 1 (those past `last` read key `last`
// again; the caller hides them). q is fp32, zero-padded to whole vectors.
template <int DT>
FA_INLINE R scores_block(const Dec& g, const float* q, const char* kbase, int64_t ksl, int64_t j0, int64_t last) {
  constexpr int esz = DT == kF32 ? 4 : 2;
  const char* kp[W];
#pragma GCC unroll 16
  for (int j = 0; j < W; ++j) kp[slot_of(j)] = kbase + imin(j0 + j, last) * ksl * esz;
  R acc[W];
#pragma GCC unroll 16
  for (int s = 0; s < W; ++s) acc[s] = Vec::zero();
  const int64_t full = g.D / W;
  for (int64_t v = 0; v < full; ++v) {
    const R qv = Vec::load(q + v * W);
#pragma GCC unroll 16
    for (int s = 0; s < W; ++s) acc[s] = Vec::fmadd(load_full<DT>(kp[s] + v * W * esz), qv, acc[s]);
  }
  if (full * W < g.D) {
    const int rest = (int)(g.D - full * W);
    const R qv = Vec::load(q + full * W);
#pragma GCC unroll 16
    for (int s = 0; s < W; ++s) acc[s] = Vec::fmadd(load_part<DT>(kp[s] + full * W * esz, rest), qv, acc[s]);
  }
  return reduce_lanes(acc);
}

// ---------------------------------------------------------------- P V

// O[m][v] (M rows, leading dim ldo, NV vectors from dim d0) += sum_j P[m][j] v_j[d0 ..],
// for keys j < nk of the chunk whose first value row is vbase (row stride vsl).
template <int DT, int M, int NV>
FA_INLINE void pv_block(const Dec& g, const float* P, int64_t ldp, int64_t nk, const char* vbase, int64_t vsl,
                        int64_t d0, float* O, int64_t ldo) {
  constexpr int esz = DT == kF32 ? 4 : 2;
  R acc[M][NV];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = Vec::load(O + m * ldo + d0 + v * W);
  const int tail = (int)(g.Dv - (d0 + (NV - 1) * W));  // lanes of the last vector in the dims
  for (int64_t j = 0; j < nk; ++j) {
    const char* vr = vbase + (j * vsl + d0) * esz;
    R x[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      x[v] = (v == NV - 1 && tail < W) ? load_part<DT>(vr + v * W * esz, tail) : load_full<DT>(vr + v * W * esz);
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const R pm = Vec::set1(P[m * ldp + j]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[m][v] = Vec::fmadd(pm, x[v], acc[m][v]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) Vec::store(O + m * ldo + d0 + v * W, acc[m][v]);
}

// Rows per register block and vectors per row block of P V: MB x NV accumulators plus NV
// value vectors and one broadcast fit the register file (AVX-512: 4 x 4 + 5 of 32;
// AVX2: 4 x 2 + 3 of 16, leaving room for the address arithmetic).
// A lone row (multi-head decoding: one query row per kv head) takes wider blocks: its NV
// accumulators are NV independent FMA chains, and 2 or 4 of them leave the FMA units waiting
// on their latency; 8 vectors also read a whole 128-dim fp32 value row (AVX-512) or half of
// it (AVX2) per pass over the chunk, where 4 AVX2 vectors took four passes over a chunk of
// rows 4 KiB apart in a flash-layout cache (AVX-512: 8 + 8 + 1 of 32; AVX2: 8 accumulators,
// the value vectors read as FMA memory operands (fp32) or widened one at a time, and the
// broadcast: 10 of 16). Two rows (a GQA group of 2, or two query rows per kv head) take
// wider blocks for the same reasons: AVX2 4 vectors (8 chains, not 4: 8 + 4 + 1 of 16),
// AVX-512 8 (one pass over a 128-dim row: 16 + 8 + 1 of 32); three rows keep kNV (AVX2: 3
// vectors measured slower in fp32).
#if FA_VEC_BITS == 512
constexpr int kMB = 4, kNV = 4, kNV1 = 8, kNV2 = 8;
#else
constexpr int kMB = 4, kNV = 2, kNV1 = 8, kNV2 = 4;
#endif

template <int DT, int M>
FA_INLINE void pv_rows(const Dec& g, const float* P, int64_t ldp, int64_t nk, const char* vbase, int64_t vsl,
                       float* O, int64_t ldo) {
  constexpr int NV = M == 1 ? kNV1 : M == 2 ? kNV2 : kNV;
  for (int64_t v0 = 0; v0 < g.nvdv; v0 += NV) {
    switch ((int)imin(NV, g.nvdv - v0)) {
      case 1: pv_block<DT, M, 1>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 2: pv_block<DT, M, 2>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 3: if constexpr (NV >= 3) pv_block<DT, M, 3>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 4: if constexpr (NV >= 4) pv_block<DT, M, 4>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 5: if constexpr (NV >= 5) pv_block<DT, M, 5>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 6: if constexpr (NV >= 6) pv_block<DT, M, 6>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 7: if constexpr (NV >= 7) pv_block<DT, M, 7>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      case 8: if constexpr (NV >= 8) pv_block<DT, M, 8>(g, P, ldp, nk, vbase, vsl, v0 * W, O, ldo); break;
      default: break;
    }
  }
}

template <int DT>
void pv(const Dec& g, int64_t rows, const float* P, int64_t ldp, int64_t nk, const char* vbase, int64_t vsl,
        float* O, int64_t ldo) {
  int64_t r = 0;
  for (; r + kMB <= rows; r += kMB) pv_rows<DT, kMB>(g, P + r * ldp, ldp, nk, vbase, vsl, O + r * ldo, ldo);
  switch ((int)(rows - r)) {
    case 1: pv_rows<DT, 1>(g, P + r * ldp, ldp, nk, vbase, vsl, O + r * ldo, ldo); break;
    case 2: pv_rows<DT, 2>(g, P + r * ldp, ldp, nk, vbase, vsl, O + r * ldo, ldo); break;
    case 3: pv_rows<DT, 3>(g, P + r * ldp, ldp, nk, vbase, vsl, O + r * ldo, ldo); break;
    default: break;
  }
}

// ---------------------------------------------------------------- one unit of work

struct Unit {
  int64_t b, hk, j0, j1;  // sequence, kv head, keys [j0, j1)
  int64_t part;           // index of its partial result, or -1: it covers the whole range
};

struct Scratch {
  float *q, *S, *O, *m, *l;
};

// Rows of the unit: r = gi * Lq + i (query head hk * group + gi, query row i).
template <int DT>
void run_unit(const AttnParams& p, const Dec& g, const int64_t* lens, const Unit& u, Scratch& t,
              float* part_buf) {
  constexpr int esz = DT == kF32 ? 4 : 2;
  const float ninf = -__builtin_inff();
  const int64_t n = lens[u.b];
  const int64_t rows = g.rows;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = u.hk * g.group + r / g.Lq, i = r % g.Lq;
    const char* qr = static_cast<const char*>(p.q.ptr) + (u.b * p.q.sb + h * p.q.sh + i * p.q.sl) * esz;
    float* qd = t.q + r * g.Dp;
    for (int64_t d = 0; d < g.D; ++d) qd[d] = load_elem<DT>(qr, d * p.q.sd) * g.qscale;
    for (int64_t d = g.D; d < g.Dp; ++d) qd[d] = 0.0f;
    t.m[r] = ninf;
    t.l[r] = 0.0f;
    for (int64_t d = 0; d < g.Dvp; ++d) t.O[r * g.Dvp + d] = 0.0f;
  }
  const char* kbase = static_cast<const char*>(p.k.ptr) + (u.b * p.k.sb + u.hk * p.k.sh) * esz;
  const char* vbase = static_cast<const char*>(p.v.ptr) + (u.b * p.v.sb + u.hk * p.v.sh) * esz;
  const float cap = p.softcap, inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
  const int64_t off = n - g.Lq;

  for (int64_t c0 = u.j0; c0 < u.j1; c0 += kChunk) {
    const int64_t nc = imin(kChunk, u.j1 - c0), ncp = round_up(nc, W);
    // Whether some row sees only part of the chunk: then the band is masked per row.
    bool banded = false;
    for (int64_t i = 0; i < g.Lq && !banded; ++i) {
      int64_t lo, hi;
      row_range(g, n, i, &lo, &hi);
      banded = lo > c0 || hi < c0 + nc - 1;
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* S = t.S + r * kChunk;
      const float* q = t.q + r * g.Dp;
      for (int64_t j = 0; j < ncp; j += W) Vec::store(S + j, scores_block<DT>(g, q, kbase, p.k.sl, c0 + j, u.j1 - 1));
      const int64_t i = r % g.Lq;
      if (g.generic) {
        const int64_t h = u.hk * g.group + r / g.Lq;
        const float slope = p.alibi ? p.alibi[u.b * p.alibi_sb + h * p.alibi_sh] : 0.0f;
        for (int64_t jj = 0; jj < nc; ++jj) {
          float x = S[jj];
          if (cap > 0.0f) x = cap * tanhf(x * inv_cap);
          if (p.alibi) x -= slope * fabsf((float)(i + off - (c0 + jj)));
          S[jj] = to_log2(x);
        }
      }
      if (banded) {
        int64_t lo, hi;
        row_range(g, n, i, &lo, &hi);
        for (int64_t jj = 0; jj < nc; ++jj)
          if (c0 + jj < lo || c0 + jj > hi) S[jj] = ninf;
      }
      for (int64_t jj = nc; jj < ncp; ++jj) S[jj] = ninf;
      // Online softmax of the row over this chunk; P overwrites S.
      R vm = Vec::set1(ninf);
      for (int64_t j = 0; j < ncp; j += W) vm = Vec::max(vm, Vec::load(S + j));
      const float bm = Vec::hmax(vm);
      const float m_new = bm > t.m[r] ? bm : t.m[r];
      // Nothing visible yet: subtract 0 so exp2 gives exactly 0 (not NaN from -inf + inf).
      const float m_use = m_new == ninf ? 0.0f : m_new;
      const float alpha = exp2f(t.m[r] - m_use);
      const R nm = Vec::set1(-m_use);
      R vs = Vec::zero();
      for (int64_t j = 0; j < ncp; j += W) {
        const R e = Vec::exp2(Vec::add(Vec::load(S + j), nm));
        vs = Vec::add(vs, e);
        Vec::store(S + j, e);
      }
      t.l[r] = t.l[r] * alpha + Vec::hsum(vs);
      t.m[r] = m_new;
      if (alpha != 1.0f) {
        const R a = Vec::set1(alpha);
        float* o = t.O + r * g.Dvp;
        for (int64_t d = 0; d < g.Dvp; d += W) Vec::store(o + d, Vec::mul(Vec::load(o + d), a));
      }
    }
    pv<DT>(g, rows, t.S, kChunk, nc, vbase + c0 * p.v.sl * esz, p.v.sl, t.O, g.Dvp);
  }

  if (u.part >= 0) {  // (m, l, O) per row, merged later
    float* pb = part_buf + u.part * rows * (g.Dvp + 2);
    for (int64_t r = 0; r < rows; ++r) {
      float* e = pb + r * (g.Dvp + 2);
      e[0] = t.m[r];
      e[1] = t.l[r];
      for (int64_t d = 0; d < g.Dvp; ++d) e[2 + d] = t.O[r * g.Dvp + d];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = u.hk * g.group + r / g.Lq, i = r % g.Lq;
    const bool empty = t.l[r] == 0.0f;  // no visible key: output 0, LSE +inf
    const float inv = empty ? 0.0f : 1.0f / t.l[r];
    char* orow = static_cast<char*>(const_cast<void*>(p.out.ptr)) + (u.b * p.out.sb + h * p.out.sh + i * p.out.sl) * esz;
    for (int64_t d = 0; d < g.Dv; ++d) store_elem<DT>(orow, d * p.out.sd, t.O[r * g.Dvp + d] * inv);
    p.lse[u.b * p.lse_sb + h * p.lse_sh + i * p.lse_sl] = empty ? __builtin_inff() : (t.m[r] + log2f(t.l[r])) * kLn2;
  }
}

// Rows of (sequence b, kv head hk) from its `count` partial results starting at `first`.
template <int DT>
void merge(const AttnParams& p, const Dec& g, int64_t b, int64_t hk, int64_t first, int64_t count,
           const float* part_buf, float* acc) {
  constexpr int esz = DT == kF32 ? 4 : 2;
  const int64_t rows = g.rows, ld = rows * (g.Dvp + 2);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = hk * g.group + r / g.Lq, i = r % g.Lq;
    float mx = -__builtin_inff();
    for (int64_t s = 0; s < count; ++s) {
      const float ms = part_buf[(first + s) * ld + r * (g.Dvp + 2)];
      mx = ms > mx ? ms : mx;
    }
    float l = 0.0f;
    for (int64_t d = 0; d < g.Dvp; ++d) acc[d] = 0.0f;
    if (mx != -__builtin_inff()) {
      for (int64_t s = 0; s < count; ++s) {
        const float* e = part_buf + (first + s) * ld + r * (g.Dvp + 2);
        if (e[0] == -__builtin_inff()) continue;  // this part saw nothing
        const float w = exp2f(e[0] - mx);
        l += e[1] * w;
        const R wv = Vec::set1(w);
        for (int64_t d = 0; d < g.Dvp; d += W) Vec::store(acc + d, Vec::fmadd(wv, Vec::load(e + 2 + d), Vec::load(acc + d)));
      }
    }
    const bool empty = l == 0.0f;
    const float inv = empty ? 0.0f : 1.0f / l;
    char* orow = static_cast<char*>(const_cast<void*>(p.out.ptr)) + (b * p.out.sb + h * p.out.sh + i * p.out.sl) * esz;
    for (int64_t d = 0; d < g.Dv; ++d) store_elem<DT>(orow, d * p.out.sd, acc[d] * inv);
    p.lse[b * p.lse_sb + h * p.lse_sh + i * p.lse_sl] = empty ? __builtin_inff() : (mx + log2f(l)) * kLn2;
  }
}

template <int DT>
void decode_typed(const AttnParams& p) {
  Dec g;
  g.B = p.batch;
  g.Hq = p.heads_q;
  g.Hk = p.heads_k;
  g.group = p.heads_q / p.heads_k;
  g.Lq = p.seqlen_q;
  g.rows = g.group * g.Lq;
  g.D = p.head_dim;
  g.Dv = p.head_dim_v;
  g.Dp = round_up(g.D, W);
  g.Dvp = round_up(g.Dv, W);
  g.nvd = g.Dp / W;
  g.nvdv = g.Dvp / W;
  g.wl = p.window_left;
  g.wr = p.causal ? 0 : p.window_right;
  g.generic = p.softcap > 0.0f || p.alibi != nullptr;
  g.qscale = g.generic ? p.scale : p.scale * kLog2e;
  const int64_t* lens = p.kv_lens;
  int nt = p.num_threads > 0 ? p.num_threads : 1;

  // Keys each sequence's rows can see at all (the union of the rows' bands).
  int64_t* span = alloc<int64_t>(2 * g.B);
  int64_t total = 0;
  for (int64_t b = 0; b < g.B; ++b) {
    int64_t lo0, hi0, lo1, hi1;
    row_range(g, lens[b], 0, &lo0, &hi0);
    row_range(g, lens[b], g.Lq - 1, &lo1, &hi1);
    span[2 * b] = lo0;
    span[2 * b + 1] = imax(lo0, hi1 + 1);
    total += (span[2 * b + 1] - span[2 * b]) * g.Hk;
  }
  // A call that reads little (short caches, one sequence) runs on one thread: waking the
  // others and meeting them at the barrier would cost more than the work.
  const int64_t esz = p.dtype == kF32 ? 4 : 2;
  if (total * (g.D + g.Dv) * esz < kMinParallelBytes) nt = 1;
  // Split-KV: aim at 4 units per thread (ragged lengths balance through the dynamic
  // schedule), never below kMinSplit keys a unit; one thread splits only for locality.
  // Where a head's keys lie kLocalityStride bytes apart or more (several kv heads in each
  // cache row), ranges of at most kLocalityKeys keys on any thread count (see the top).
  int64_t chunk = nt == 1 ? (int64_t)1 << 62 : imax(kMinSplit, round_up(cdiv(total, 4 * nt), kChunk));
  if (g.Hk > 1 && p.k.sl * esz >= kLocalityStride) chunk = imin(chunk, kLocalityKeys);
  int64_t n_units = 0, n_parts = 0;
  for (int64_t b = 0; b < g.B; ++b) {
    const int64_t c = cdiv(span[2 * b + 1] - span[2 * b], chunk);
    n_units += c * g.Hk;
    if (c > 1) n_parts += c * g.Hk;
  }
  Unit* units = alloc<Unit>(n_units);
  int64_t* first_part = alloc<int64_t>(g.B * g.Hk);  // per (b, hk): first partial, or -1
  int64_t* part_count = alloc<int64_t>(g.B * g.Hk);
  {
    int64_t u = 0, pi = 0;
    for (int64_t b = 0; b < g.B; ++b) {
      const int64_t lo = span[2 * b], hi = span[2 * b + 1];
      const int64_t c = cdiv(hi - lo, chunk);
      const int64_t step = c > 0 ? round_up(cdiv(hi - lo, c), W) : 0;
      for (int64_t hk = 0; hk < g.Hk; ++hk) {
        first_part[b * g.Hk + hk] = c > 1 ? pi + hk * c : -1;
        part_count[b * g.Hk + hk] = c;
      }
      // Key range outer, kv head inner: consecutive units read the same cache rows (a row holds
      // every kv head's keys), while those pages are still in the TLB and the caches.
      for (int64_t s = 0; s < c; ++s) {
        for (int64_t hk = 0; hk < g.Hk; ++hk, ++u) {
          units[u].b = b;
          units[u].hk = hk;
          units[u].j0 = lo + s * step;
          units[u].j1 = imin(hi, lo + (s + 1) * step);
          units[u].part = c > 1 ? pi + hk * c + s : -1;
        }
      }
      if (c > 1) pi += g.Hk * c;
    }
    n_units = u;
  }
  int64_t n_merge = 0;
  for (int64_t bh = 0; bh < g.B * g.Hk; ++bh) n_merge += part_count[bh] != 1;
  float* part_buf = n_parts ? alloc<float>(n_parts * g.rows * (g.Dvp + 2)) : nullptr;

#pragma omp parallel num_threads(nt)
  {
    Scratch t;
    t.q = alloc<float>(g.rows * g.Dp);
    t.S = alloc<float>(g.rows * kChunk);
    t.O = alloc<float>(g.rows * g.Dvp);
    t.m = alloc<float>(g.rows);
    t.l = alloc<float>(g.rows);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_units; ++w) {
      if (units[w].j1 > units[w].j0) {
        run_unit<DT>(p, g, lens, units[w], t, part_buf);
      } else if (units[w].part >= 0) {  // a split left with no key: a part that saw nothing
        for (int64_t r = 0; r < g.rows; ++r) part_buf[(units[w].part * g.rows + r) * (g.Dvp + 2)] = -__builtin_inff();
      }
    }
    // Then every (sequence, kv head) that was split or that sees no key at all (skipped,
    // barrier included, when there is none: on a busy machine each barrier can wait out
    // another process's time slice).
    if (n_merge > 0) {
#pragma omp for schedule(static)
      for (int64_t bh = 0; bh < g.B * g.Hk; ++bh) {
        if (part_count[bh] == 1) continue;
        merge<DT>(p, g, bh / g.Hk, bh % g.Hk, first_part[bh] < 0 ? 0 : first_part[bh], part_count[bh], part_buf, t.O);
      }
    }
    free(t.q); free(t.S); free(t.O); free(t.m); free(t.l);
  }
  free(part_buf);
  free(units);
  free(first_part);
  free(part_count);
  free(span);
}

}  // namespace

void decode_fwd(const AttnParams& p) { FA_BY_DTYPE(p.dtype, decode_typed, p) }

#undef FA_INLINE

}  // namespace fastattn::cpu::FA_ISA
