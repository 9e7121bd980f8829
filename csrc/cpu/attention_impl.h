// CPU attention forward and backward, FlashAttention-2 scheme, written once and compiled
// per instruction set. A translation unit includes this file after its system headers
// and a `#pragma GCC target(...)`, having defined:
//   FA_ISA        namespace name (avx512bf16 / avx512 / avx2)
//   FA_VEC_BITS   512 or 256 (selects `Vec` in attention_simd.h)
//   FA_DPBF16     1 to use AVX512-BF16 dot products (VDPBF16PS) for bf16 inputs
// Nothing here may use the C++ standard library's inline templates: a template
// instantiated under one target could be merged by the linker with the same instance
// from another translation unit compiled for another target (an AVX-512 copy of a
// std:: helper reached from the AVX2 path would crash older CPUs).
//
// Forward, per (sequence, query head, block of kBQ query rows), keys streamed in blocks
// of kBK:   S = Q K^T;  m' = max(m, rowmax S);  P = 2^(S*scale*log2e - m');
//           l = l 2^(m-m') + rowsum P;  O = O 2^(m-m') + P V;  finally O / l and
//           LSE = (m + log2 l) ln 2.  Scores live in the log2 domain so each
//           exponential is one exp2 (no per-element multiply by log2e).
// Backward, per (sequence, key/value head, block of kBK keys), over every query head of
// the GQA group and every query block that sees the keys: recompute S and
// P = 2^(S' - LSE log2e) (rows whose LSE is too large for that to be exact, which only
// huge additive mask values produce, get their max and sum recomputed first), then
// dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO*O)),
// dK += dS^T Q, dQ += dS K (dQ rows are shared between key blocks: accumulated in fp32
// under a per-head lock, or lock-free when whole heads are the unit of work).
// Dropout (forward and backward) multiplies P by the keep mask of fastattn/philox.py,
// redrawn from its counters wherever it is needed: the row sums use the undropped P.
//
// Matrix products go through one register-blocked micro-kernel (C[MR x 2W] in registers,
// broadcast A, vector rows of B), fed by blocks packed once into the layouts it wants:
// K^T (d, key), V (key, d) and, for bf16 with VDPBF16PS, pairs interleaved along the
// reduction dim so one 32-bit broadcast of A meets 16 pairs of B.

namespace fastattn::cpu::FA_ISA {
namespace {

#include "impl_common.h"

// Block sizes. kBK = 128 rather than 64 halves the per-row softmax bookkeeping (two
// horizontal reductions and a rescale of the O rows per key block) and the O tile
// loads/stores of P V per key, which measured ~10% faster for head dim 128 on Zen 4; the
// working set per thread (Q 64 x D, S and P 64 x 128, K and V blocks 128 x D, O 64 x D,
// fp32) stays within a 1 MiB L2 for D <= 256.
constexpr int64_t kBQ = 64;   // query rows per block
constexpr int64_t kBK = 128;  // keys per block (a multiple of 16: N of every score tile)
constexpr int64_t kPad = 16;  // feature dims are padded to this in packed buffers
constexpr int MR = Vec::MR;
// The forward's query rows per block: kBQ rounded up to a multiple of the micro-kernel's
// rows (AVX2: 66 = 11 x 6), so that no block ends in a part-filled row tile (with 64,
// every AVX2 block did: 10 x 6 + 4, the 4-row tile at two thirds of the FMA rate).
constexpr int64_t kBQF = (kBQ + MR - 1) / MR * MR;

template <class T>
T* alloc_zero(int64_t n) {
  T* ptr = alloc<T>(n);
  memset(ptr, 0, (size_t)imax(n, 1) * sizeof(T));
  return ptr;
}

// ---------------------------------------------------------------- element conversion

FA_INLINE float load_any(int dt, const void* base, int64_t i) {
  return dt == kF32 ? load_elem<kF32>(base, i) : dt == kF16 ? load_elem<kF16>(base, i) : load_elem<kBF16>(base, i);
}

// Row of n elements (element stride sd) -> fp32, zero-filled up to npad.
template <int DT>
void row_to_f32(const void* src, int64_t sd, int64_t n, int64_t npad, float* dst) {
  if (sd == 1) {
    for (int64_t c = 0; c < n; ++c) dst[c] = load_elem<DT>(src, c);
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = load_elem<DT>(src, c * sd);
  }
  for (int64_t c = n; c < npad; ++c) dst[c] = 0.0f;
}
template <int DT>
void f32_to_row(const float* src, int64_t n, float scale, void* dst, int64_t sd) {
  for (int64_t c = 0; c < n; ++c) store_elem<DT>(dst, c * sd, src[c] * scale);
}

FA_INLINE const void* elem_ptr(const AttnTensor& t, int dt_size, int64_t b, int64_t h, int64_t l) {
  return static_cast<const char*>(t.ptr) + (b * t.sb + h * t.sh + l * t.sl) * dt_size;
}
FA_INLINE void* elem_ptr_mut(const AttnTensor& t, int dt_size, int64_t b, int64_t h, int64_t l) {
  return const_cast<void*>(elem_ptr(t, dt_size, b, h, l));
}

// ---------------------------------------------------------------- micro-kernels

enum : int { kSet = 0, kAdd = 1, kScaleAdd = 2 };

// The micro-kernels' accumulators acc[M][NV] for C[M x NV*W] (leading dim ldc): zero
// (kSet), C (kAdd) or C with row m scaled by rs[m] (kScaleAdd); and their store back to C.
// Macros rather than inline functions: written out in the micro-kernel, the loops compile
// to the code the kernels were tuned with (GCC unswitches an inlined copy differently).
#define FA_TILE_LOAD(acc, C, ldc, mode, rs)                                          \
  _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) {                             \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) {                           \
      if (mode == kSet) {                                                            \
        acc[m][v] = Vec::zero();                                                     \
      } else {                                                                       \
        acc[m][v] = Vec::load(C + m * ldc + v * W);                                  \
        if (mode == kScaleAdd) acc[m][v] = Vec::mul(acc[m][v], Vec::set1(rs[m]));    \
      }                                                                              \
    }                                                                                \
  }
#define FA_TILE_STORE(acc, C, ldc)                                                   \
  _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) {                             \
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v)                             \
        Vec::store(C + m * ldc + v * W, acc[m][v]);                                  \
  }

// C[MR x NV*W] (=, +=, or row_scale * C +) A[MR x K] B[K x NV*W] in fp32.
// A(m, k) = A[m * am + k * ak] (any layout: transposed operands cost nothing);
// B rows are contiguous with leading dimension ldb.
template <int M, int NV>
FA_INLINE void ukernel_f32(int64_t K, const float* A, int64_t am, int64_t ak, const float* B,
                           int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  R acc[M][NV];
  FA_TILE_LOAD(acc, C, ldc, mode, rs)
  for (int64_t k = 0; k < K; ++k) {
    R b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = Vec::load(B + k * ldb + v * W);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const R a = Vec::set1(A[m * am + k * ak]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = Vec::fmadd(a, b[v], acc[m][v]);
    }
  }
  FA_TILE_STORE(acc, C, ldc)
}

template <int NV>
void ukernel_f32_rows(int mr, int64_t K, const float* A, int64_t am, int64_t ak, const float* B,
                      int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  switch (mr) {
#define FA_CASE(n) \
  case n: if constexpr (n <= MR) ukernel_f32<n, NV>(K, A, am, ak, B, ldb, C, ldc, mode, rs); break;
    FA_CASE(1) FA_CASE(2) FA_CASE(3) FA_CASE(4) FA_CASE(5) FA_CASE(6) FA_CASE(7) FA_CASE(8)
#undef FA_CASE
    default: break;
  }
}

// The causal staircase of a diagonal block, for the forward's two products: row m of S
// sees columns (keys) n < m + stair only. A block of rows m0 .. m0+mr-1 then needs columns
// below stair_end(m0, mr, stair) and no more: S = Q K^T may leave the rest unwritten (the
// range mask writes -inf there), and P V may stop its reduction there (P is 0 beyond).
// Without a staircase (kNoStair) every product is whole.
constexpr int64_t kNoStair = (int64_t)1 << 40;
FA_INLINE int64_t stair_end(int64_t m0, int mr, int64_t stair) { return imax(0, m0 + mr - 1 + stair); }

// C[M x N] (mode) A[M x K] B[K x N], fp32; N a multiple of W. Columns outer so that a
// K x 2W panel of B stays in L1 while every row block of A streams past it.
// ncut: skip the panels a row block's staircase hides (C left unwritten there);
// kcut: end each row block's reduction at its staircase (A must be 0 beyond it).
void gemm_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t am, int64_t ak,
              const float* B, int64_t ldb, float* C, int64_t ldc, int mode, const float* rs,
              int64_t ncut = kNoStair, int64_t kcut = kNoStair) {
  for (int64_t n0 = 0; n0 < N; n0 += 2 * W) {
    const bool two = N - n0 >= 2 * W;
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int mr = (int)imin(MR, M - m0);
      if (n0 >= stair_end(m0, mr, ncut)) continue;
      const int64_t k = imin(K, stair_end(m0, mr, kcut));
      const float* r = rs ? rs + m0 : nullptr;
      if (two)
        ukernel_f32_rows<2>(mr, k, A + m0 * am, am, ak, B + n0, ldb, C + m0 * ldc + n0, ldc, mode, r);
      else
        ukernel_f32_rows<1>(mr, k, A + m0 * am, am, ak, B + n0, ldb, C + m0 * ldc + n0, ldc, mode, r);
    }
  }
}

#if FA_DPBF16
typedef int32_t __attribute__((__may_alias__, __aligned__(1))) u32_alias;

// bf16 operands, fp32 accumulation with VDPBF16PS: acc[n] += A(m,2k) B(2k,n) + A(m,2k+1) B(2k+1,n).
// A is row-major bf16 (pairs along the reduction dim are adjacent, broadcast as one 32-bit
// lane); B is pair-interleaved: B[kp][n][2], leading dimension ldb = 2 * N elements.
template <int M, int NV>
FA_INLINE void ukernel_bf16(int64_t KP, const uint16_t* A, int64_t am, const uint16_t* B,
                            int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  R acc[M][NV];
  FA_TILE_LOAD(acc, C, ldc, mode, rs)
  for (int64_t kp = 0; kp < KP; ++kp) {
    __m512bh b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + kp * ldb + v * 2 * W);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(*reinterpret_cast<const u32_alias*>(A + m * am + 2 * kp));
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], a, b[v]);
    }
  }
  FA_TILE_STORE(acc, C, ldc)
}

template <int NV>
void ukernel_bf16_rows(int mr, int64_t KP, const uint16_t* A, int64_t am, const uint16_t* B,
                       int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  switch (mr) {
#define FA_CASE(n) \
  case n: ukernel_bf16<n, NV>(KP, A, am, B, ldb, C, ldc, mode, rs); break;
    FA_CASE(1) FA_CASE(2) FA_CASE(3) FA_CASE(4) FA_CASE(5) FA_CASE(6) FA_CASE(7) FA_CASE(8)
#undef FA_CASE
    default: break;
  }
}

// C[M x N] (mode) A[M x 2KP] B[2KP x N] with bf16 A (row-major, leading dim am) and
// pair-interleaved bf16 B (leading dim ldb = 2 * row length in elements); ncut and kcut
// as gemm_f32's (kcut counts elements of the reduction, not pairs).
void gemm_bf16(int64_t M, int64_t N, int64_t KP, const uint16_t* A, int64_t am, const uint16_t* B,
               int64_t ldb, float* C, int64_t ldc, int mode, const float* rs,
               int64_t ncut = kNoStair, int64_t kcut = kNoStair) {
  for (int64_t n0 = 0; n0 < N; n0 += 2 * W) {
    const bool two = N - n0 >= 2 * W;
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int mr = (int)imin(MR, M - m0);
      if (n0 >= stair_end(m0, mr, ncut)) continue;
      const int64_t kp = imin(KP, cdiv(stair_end(m0, mr, kcut), 2));
      const float* r = rs ? rs + m0 : nullptr;
      if (two)
        ukernel_bf16_rows<2>(mr, kp, A + m0 * am, am, B + 2 * n0, ldb, C + m0 * ldc + n0, ldc, mode, r);
      else
        ukernel_bf16_rows<1>(mr, kp, A + m0 * am, am, B + 2 * n0, ldb, C + m0 * ldc + n0, ldc, mode, r);
    }
  }
}
#endif

// ---------------------------------------------------------------- geometry and masking

struct Geo {
  int64_t nseq, Hq, Hk, group, D, Dv, Dp, Dvp, D2;
  int64_t wl, wr;  // window bounds, -1 = unbounded; causal folded into wr = 0
  bool varlen;
  bool generic;    // softcap / ALiBi / explicit mask: the per-element score path
  float scale, scale_log2, softcap;
};

Geo make_geo(const AttnParams& p) {
  Geo g;
  g.varlen = p.cu_seqlens_q != nullptr;
  g.nseq = g.varlen ? p.num_seqs : p.batch;
  g.Hq = p.heads_q;
  g.Hk = p.heads_k;
  g.group = p.heads_q / p.heads_k;
  g.D = p.head_dim;
  g.Dv = p.head_dim_v;
  g.Dp = round_up(g.D, kPad);
  g.Dvp = round_up(g.Dv, kPad);
  g.D2 = round_up(g.D, 2);
  g.wl = p.window_left;
  g.wr = p.causal ? 0 : p.window_right;
  g.generic = p.softcap > 0.0f || p.alibi != nullptr || p.mask_kind != AttnMaskKind::kNone;
  g.scale = p.scale;
  g.scale_log2 = p.scale * kLog2e;
  g.softcap = p.softcap;
  return g;
}

struct Seq {
  int64_t tb;      // batch index into the tensors (0 for varlen)
  int64_t b;       // sequence index (batch index, or varlen sequence)
  int64_t q0, lq;  // first row and length along the tensors' query seq dim
  int64_t k0, lk;
  int64_t off;     // causal/window alignment: key j visible from row i around i + off
  int64_t off_alibi;
};

FA_INLINE Seq seq_of(const AttnParams& p, const Geo& g, int64_t b) {
  Seq s;
  s.b = b;
  if (g.varlen) {
    s.tb = 0;
    s.q0 = p.cu_seqlens_q[b];
    s.lq = p.cu_seqlens_q[b + 1] - s.q0;
    s.k0 = p.cu_seqlens_k[b];
    s.lk = p.cu_seqlens_k[b + 1] - s.k0;
  } else {
    s.tb = b;
    s.q0 = 0;
    s.lq = p.seqlen_q;
    s.k0 = 0;
    s.lk = p.seqlen_k;
  }
  s.off = p.bottom_right ? s.lk - s.lq : 0;
  s.off_alibi = s.lk - s.lq;
  return s;
}

// Visible keys of query row i: [lo, hi] (empty when lo > hi), clipped to [0, lk).
FA_INLINE void row_range(const Geo& g, const Seq& s, int64_t i, int64_t* lo, int64_t* hi) {
  *lo = g.wl >= 0 ? imax(0, i + s.off - g.wl) : 0;
  *hi = g.wr >= 0 ? imin(s.lk - 1, i + s.off + g.wr) : s.lk - 1;
}

// Keys [jlo, jhi) seen by any row of [i0, i1).
FA_INLINE void block_key_range(const Geo& g, const Seq& s, int64_t i0, int64_t i1, int64_t* jlo, int64_t* jhi) {
  *jlo = g.wl >= 0 ? imax(0, i0 + s.off - g.wl) : 0;
  *jhi = g.wr >= 0 ? imin(s.lk, i1 - 1 + s.off + g.wr + 1) : s.lk;
}

// Whether some score of rows [i0, i1) x keys [j0, j0 + nk) is outside the visible band
// or past the end of the keys.
FA_INLINE bool needs_range_mask(const Geo& g, const Seq& s, int64_t i0, int64_t i1, int64_t j0, int64_t nk) {
  return j0 + nk > s.lk || (g.wl >= 0 && j0 < i1 - 1 + s.off - g.wl) ||
         (g.wr >= 0 && j0 + nk - 1 > i0 + s.off + g.wr);
}

// -inf in S (mq x nk, leading dim kBK; rows i0.., keys j0..) outside each row's visible band.
FA_INLINE void mask_range(const Geo& g, const Seq& s, int64_t i0, int64_t mq, int64_t j0, int64_t nk, float* S) {
  const float ninf = -__builtin_inff();
  for (int64_t r = 0; r < mq; ++r) {
    float* z = S + r * kBK;
    int64_t lo, hi;
    row_range(g, s, i0 + r, &lo, &hi);
    const int64_t a = imin(nk, imax(0, lo - j0)), e = imax(a, imin(nk, hi - j0 + 1));
    for (int64_t j = 0; j < a; ++j) z[j] = ninf;
    for (int64_t j = e; j < nk; ++j) z[j] = ninf;
  }
}

// Turn raw scores S (mq x nk, leading dim kBK) of query head h, rows i0.., keys j0.. into
// log2-domain logits: scale (softcap, ALiBi, mask) and -inf where invisible. With
// softcap and G != nullptr, G receives d(softcapped)/d(scaled score) = 1 - tanh^2.
void transform_scores(const AttnParams& p, const Geo& g, const Seq& s, int64_t h, int64_t i0,
                      int64_t mq, int64_t j0, int64_t nk, bool range_mask, float* S, float* G) {
  const float ninf = -__builtin_inff();
  if (!g.generic) {
    const R c = Vec::set1(g.scale_log2);
    for (int64_t r = 0; r < mq; ++r) {
      float* z = S + r * kBK;
      for (int64_t j = 0; j < nk; j += W) Vec::store(z + j, Vec::mul(Vec::load(z + j), c));
    }
    if (range_mask) mask_range(g, s, i0, mq, j0, nk, S);
    return;
  }
  const bool has_cap = g.softcap > 0.0f;
  const float inv_cap = has_cap ? 1.0f / g.softcap : 0.0f;
  const float slope = p.alibi ? p.alibi[s.b * p.alibi_sb + h * p.alibi_sh] : 0.0f;
  const int mask_dt = p.mask_dtype;
  for (int64_t r = 0; r < mq; ++r) {
    const int64_t i = i0 + r;
    float* z = S + r * kBK;
    int64_t lo, hi;
    row_range(g, s, i, &lo, &hi);
    const char* mrow = nullptr;
    if (p.mask_kind != AttnMaskKind::kNone) {
      const int esz = p.mask_kind == AttnMaskKind::kBool ? 1 : (mask_dt == kF32 ? 4 : 2);
      mrow = static_cast<const char*>(p.mask.ptr) + (s.tb * p.mask.sb + h * p.mask.sh + i * p.mask.sl) * esz;
    }
    for (int64_t jj = 0; jj < nk; ++jj) {
      const int64_t j = j0 + jj;
      bool visible = j >= lo && j <= hi;
      float t = z[jj] * g.scale;
      if (has_cap) {
        // softcap * tanh(t / softcap): bounded logits (Gemma 2); its derivative is kept
        // for the backward pass.
        const float th = tanhf(t * inv_cap);
        t = g.softcap * th;
        if (G) G[r * kBK + jj] = 1.0f - th * th;
      }
      if (p.alibi) t -= slope * fabsf((float)(i + s.off_alibi - j));
      if (visible && mrow) {  // masked-out rows/keys are never read
        if (p.mask_kind == AttnMaskKind::kBool)
          visible = reinterpret_cast<const uint8_t*>(mrow)[j * p.mask.sd] != 0;
        else
          t += load_any(mask_dt, mrow, j * p.mask.sd);
      }
      z[jj] = visible ? to_log2(t) : ninf;
    }
  }
}

// ---------------------------------------------------------------- dropout

// First output word of Philox4x32-10 on counter (lo, hi, 0, 0) under key `seed`, the
// stream of Triton's tl.rand (fastattn/philox.py is the specification).
FA_INLINE uint32_t philox_word(uint64_t seed, uint64_t ctr) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = (uint64_t)0xCD9E8D57u * c2, pa = (uint64_t)0xD2511F53u * c0;
    const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0, n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)pb;
    c3 = (uint32_t)pa;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// M[jj] = 1 / (1 - p) where probability (row i of head h, key j0 + jj) is kept, else 0,
// for jj < nk. The uniform is tl.rand's: the word as int32, folded onto [0, 2^31) by
// x -> ~x for negatives, times 4.6566127342e-10 in fp32; kept iff it is >= p in fp32.
#if FA_VEC_BITS == 512
using VI = __m512i;
FA_INLINE VI vi_load(const uint32_t* a) { return _mm512_loadu_si512(a); }
FA_INLINE VI vi_set1(uint32_t x) { return _mm512_set1_epi32((int)x); }
FA_INLINE VI vi_xor(VI a, VI b) { return _mm512_xor_si512(a, b); }
// High and low 32-bit words of a * x per lane (VPMULUDQ takes the even lanes' words).
FA_INLINE void vi_mulhilo(VI a, VI x, VI* hi, VI* lo) {
  const VI even = _mm512_mul_epu32(x, a), odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), a);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
FA_INLINE R vi_keep(VI w, float p, float rp) {  // tl.rand's uniform >= p ? rp : 0
  const R u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_xor_si512(w, _mm512_srai_epi32(w, 31))),
                            _mm512_set1_ps(4.6566127342e-10f));
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(u, _mm512_set1_ps(p), _CMP_GE_OQ), _mm512_set1_ps(rp));
}
#else
using VI = __m256i;
FA_INLINE VI vi_load(const uint32_t* a) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)); }
FA_INLINE VI vi_set1(uint32_t x) { return _mm256_set1_epi32((int)x); }
FA_INLINE VI vi_xor(VI a, VI b) { return _mm256_xor_si256(a, b); }
FA_INLINE void vi_mulhilo(VI a, VI x, VI* hi, VI* lo) {
  const VI even = _mm256_mul_epu32(x, a), odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), a);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
FA_INLINE R vi_keep(VI w, float p, float rp) {
  const R u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_xor_si256(w, _mm256_srai_epi32(w, 31))),
                            _mm256_set1_ps(4.6566127342e-10f));
  return _mm256_and_ps(_mm256_cmp_ps(u, _mm256_set1_ps(p), _CMP_GE_OQ), _mm256_set1_ps(rp));
}
#endif

void dropout_row(const AttnParams& p, const Seq& s, int64_t h, int64_t i, int64_t j0, int64_t nk, float* M) {
  const float rp = 1.0f / (1.0f - p.dropout_p);
  const uint64_t base = (uint64_t)(p.rng_offset + ((s.b * p.heads_q + h) * p.drop_lq + i) * p.drop_lk + j0);
  int64_t jj = 0;
  // W counters at a time, Philox's rounds on vectors of 32-bit words (the scalar loop below
  // is the same arithmetic, for a tail).
  for (; jj + W <= nk; jj += W) {
    alignas(64) uint32_t lo[W], hi[W];
    for (int l = 0; l < W; ++l) {
      const uint64_t c = base + (uint64_t)(jj + l);
      lo[l] = (uint32_t)c;
      hi[l] = (uint32_t)(c >> 32);
    }
    VI c0 = vi_load(lo), c1 = vi_load(hi), c2 = vi_set1(0), c3 = vi_set1(0);
    uint32_t k0 = (uint32_t)p.seed, k1 = (uint32_t)(p.seed >> 32);
    const VI ma = vi_set1(0xD2511F53u), mb = vi_set1(0xCD9E8D57u);
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      VI hb, lb, ha, la;
      vi_mulhilo(mb, c2, &hb, &lb);
      vi_mulhilo(ma, c0, &ha, &la);
      c0 = vi_xor(vi_xor(hb, c1), vi_set1(k0));
      c2 = vi_xor(vi_xor(ha, c3), vi_set1(k1));
      c1 = lb;
      c3 = la;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    Vec::store(M + jj, vi_keep(c0, p.dropout_p, rp));
  }
  for (; jj < nk; ++jj) {
    const int32_t w = (int32_t)philox_word(p.seed, base + (uint64_t)jj);
    const float u = (float)(w < 0 ? ~w : w) * 4.6566127342e-10f;
    M[jj] = u >= p.dropout_p ? rp : 0.0f;
  }
}

// ---------------------------------------------------------------- threading helpers

FA_INLINE int num_threads_for(const AttnParams& p) { return p.num_threads > 0 ? p.num_threads : 1; }

}  // namespace

// ==================================================================== forward

namespace {

// Per (sequence, kv head, key block) packed K and V, in the micro-kernels' layouts:
//   fp32:  Kt[d][kBK] (d < D),          V[j][Dvp]
//   DP:    K2[d/2][kBK][2] (d < D2),    V2[j/2][Dvp][2]    (bf16 bit patterns)
// Keys past the sequence end and padded dims are zero.
template <bool DP> struct ElemT { using T = float; };
template <> struct ElemT<true> { using T = uint16_t; };

template <int DT, bool DP>
void pack_kv_block(const AttnParams& p, const Geo& g, const Seq& s, int64_t hk, int64_t j0,
                   typename ElemT<DP>::T* Kb, typename ElemT<DP>::T* Vb) {
  const int esz = DT == kF32 ? 4 : 2;
  const int64_t nvalid = imin(kBK, s.lk - j0);
  if constexpr (DP) {
    memset(Kb, 0, sizeof(uint16_t) * g.D2 * kBK);
    memset(Vb, 0, sizeof(uint16_t) * kBK * g.Dvp);
#if FA_DPBF16
    if (p.k.sd == 1 && p.v.sd == 1) {
      // Contiguous rows: K moves as 32-bit words (a pair along d is one word of K2), and
      // two keys' V values interleave into one word of V2 each; a scalar scatter of 16-bit
      // elements cost ~2% of a causal bf16 forward.
      u32_alias* kw = reinterpret_cast<u32_alias*>(Kb);
      u32_alias* vw = reinterpret_cast<u32_alias*>(Vb);
      for (int64_t jj = 0; jj < nvalid; ++jj) {
        const uint16_t* kr = static_cast<const uint16_t*>(elem_ptr(p.k, esz, s.tb, hk, s.k0 + j0 + jj));
        for (int64_t dp = 0; dp < g.D / 2; ++dp) kw[dp * kBK + jj] = *reinterpret_cast<const u32_alias*>(kr + 2 * dp);
        if (g.D & 1) Kb[((g.D >> 1) * kBK + jj) * 2] = kr[g.D - 1];
      }
      for (int64_t jj = 0; jj < nvalid; jj += 2) {
        const uint16_t* v0 = static_cast<const uint16_t*>(elem_ptr(p.v, esz, s.tb, hk, s.k0 + j0 + jj));
        u32_alias* vd = vw + (jj >> 1) * g.Dvp;
        if (jj + 1 < nvalid) {
          const uint16_t* v1 = v0 + p.v.sl;
          for (int64_t d = 0; d < g.Dv; ++d) vd[d] = (int32_t)((uint32_t)v0[d] | (uint32_t)v1[d] << 16);
        } else {
          for (int64_t d = 0; d < g.Dv; ++d) vd[d] = v0[d];
        }
      }
      return;
    }
#endif
    for (int64_t jj = 0; jj < nvalid; ++jj) {
      const uint16_t* kr = static_cast<const uint16_t*>(elem_ptr(p.k, esz, s.tb, hk, s.k0 + j0 + jj));
      for (int64_t d = 0; d < g.D; ++d) Kb[((d >> 1) * kBK + jj) * 2 + (d & 1)] = kr[d * p.k.sd];
      const uint16_t* vr = static_cast<const uint16_t*>(elem_ptr(p.v, esz, s.tb, hk, s.k0 + j0 + jj));
      uint16_t* vd = Vb + (jj >> 1) * 2 * g.Dvp + (jj & 1);
      for (int64_t d = 0; d < g.Dv; ++d) vd[2 * d] = vr[d * p.v.sd];
    }
  } else {
    for (int64_t d = 0; d < g.D; ++d)
      for (int64_t jj = nvalid; jj < kBK; ++jj) Kb[d * kBK + jj] = 0.0f;
    for (int64_t jj = 0; jj < nvalid; ++jj) {
      const void* kr = elem_ptr(p.k, esz, s.tb, hk, s.k0 + j0 + jj);
      for (int64_t d = 0; d < g.D; ++d) Kb[d * kBK + jj] = load_elem<DT>(kr, d * p.k.sd);
      row_to_f32<DT>(elem_ptr(p.v, esz, s.tb, hk, s.k0 + j0 + jj), p.v.sd, g.Dv, g.Dvp, Vb + jj * g.Dvp);
    }
    for (int64_t jj = nvalid; jj < kBK; ++jj)
      for (int64_t d = 0; d < g.Dvp; ++d) Vb[jj * g.Dvp + d] = 0.0f;
  }
}

template <int DT>
void fwd_typed(const AttnParams& p) {
  constexpr bool DP = FA_DPBF16 && DT == kBF16;
  using E = typename ElemT<DP>::T;
  const Geo g = make_geo(p);
  const int esz = DT == kF32 ? 4 : 2;
  const int nt = num_threads_for(p);

  // Key blocks of every sequence, and (sequence, query block) work in descending
  // query-block order so that the longest causal rows start first.
  int64_t* kb_off = alloc<int64_t>(g.nseq + 1);
  int64_t max_nqb = 0, n_qblocks = 0;
  kb_off[0] = 0;
  for (int64_t b = 0; b < g.nseq; ++b) {
    const Seq s = seq_of(p, g, b);
    kb_off[b + 1] = kb_off[b] + cdiv(s.lk, kBK);
    max_nqb = imax(max_nqb, cdiv(s.lq, kBQF));
    n_qblocks += cdiv(s.lq, kBQF);
  }
  const int64_t n_kblocks = kb_off[g.nseq] * g.Hk;
  const int64_t ksz = DP ? g.D2 * kBK : g.D * kBK;
  const int64_t vsz = kBK * g.Dvp;
  E* kvbuf = alloc<E>(n_kblocks * (ksz + vsz));
  int64_t* units = alloc<int64_t>(2 * n_qblocks);  // (sequence, query block) pairs
  int64_t n_units = 0;
  for (int64_t qb = max_nqb - 1; qb >= 0; --qb)
    for (int64_t b = 0; b < g.nseq; ++b)
      if (qb < cdiv(seq_of(p, g, b).lq, kBQF)) {
        units[2 * n_units] = b;
        units[2 * n_units + 1] = qb;
        ++n_units;
      }

#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_kblocks; ++blk) {
      const int64_t hk = blk % g.Hk, gkb = blk / g.Hk;
      int64_t b = 0;
      while (kb_off[b + 1] <= gkb) ++b;
      const Seq s = seq_of(p, g, b);
      E* base = kvbuf + blk * (ksz + vsz);
      pack_kv_block<DT, DP>(p, g, s, hk, (gkb - kb_off[b]) * kBK, base, base + ksz);
    }

    const int64_t qld = DP ? g.D2 : g.D;
    E* Qb = alloc_zero<E>(kBQF * qld);
    float* S = alloc<float>(kBQF * kBK);
    E* P = alloc<E>(kBQF * kBK);
    float* O = alloc<float>(kBQF * g.Dvp);
    float* m = alloc<float>(kBQF);
    float* l = alloc<float>(kBQF);
    float* alpha = alloc<float>(kBQF);
    const bool drop = p.dropout_p > 0.0f;
    float* Mrow = drop ? alloc<float>(kBK) : nullptr;

#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_units * g.Hq; ++w) {
      const int64_t u = w / g.Hq, h = w % g.Hq, hk = h / g.group;
      const Seq s = seq_of(p, g, units[2 * u]);
      const int64_t i0 = units[2 * u + 1] * kBQF, mq = imin(kBQF, s.lq - i0);

      for (int64_t r = 0; r < mq; ++r) {
        const void* qr = elem_ptr(p.q, esz, s.tb, h, s.q0 + i0 + r);
        if constexpr (DP) {
          for (int64_t d = 0; d < g.D; ++d) Qb[r * qld + d] = static_cast<const uint16_t*>(qr)[d * p.q.sd];
        } else {
          row_to_f32<DT>(qr, p.q.sd, g.D, g.D, Qb + r * qld);
        }
        m[r] = -__builtin_inff();
        l[r] = 0.0f;
      }
      memset(O, 0, sizeof(float) * kBQF * g.Dvp);

      int64_t jlo, jhi;
      block_key_range(g, s, i0, i0 + mq, &jlo, &jhi);
      // Plain scores with a positive scale: the scale is folded into the exponent's FMA
      // (2^(s*c - m)) and the row max (max(s)*c), saving a pass over S. Otherwise the
      // transform writes log2-domain logits and zs = 1 (an exact FMA).
      const bool fuse_scale = !g.generic && g.scale_log2 > 0.0f;
      const float zscale = fuse_scale ? g.scale_log2 : 1.0f;
      const R zs = Vec::set1(zscale);
      for (int64_t kb = jlo / kBK; kb * kBK < jhi; ++kb) {
        const int64_t j0 = kb * kBK;
        const int64_t nk = imin(kBK, round_up(s.lk - j0, 16));
        const E* Kb = kvbuf + ((kb_off[s.b] + kb) * g.Hk + hk) * (ksz + vsz);
        const E* Vb = Kb + ksz;
        // Row r of the block sees keys j0 + jj with jj < r + stair (causal or a right window):
        // the products skip what a whole row block of the diagonal would only mask away.
        const int64_t stair = g.wr >= 0 ? i0 + s.off + g.wr - j0 + 1 : kNoStair;
#if FA_DPBF16
        if constexpr (DP) gemm_bf16(mq, nk, g.D2 / 2, Qb, qld, Kb, 2 * kBK, S, kBK, kSet, nullptr, stair);
        else
#endif
          gemm_f32(mq, nk, g.D, reinterpret_cast<const float*>(Qb), qld, 1,
                   reinterpret_cast<const float*>(Kb), kBK, S, kBK, kSet, nullptr, stair);
        const bool range_mask = needs_range_mask(g, s, i0, i0 + mq, j0, nk);
        if (fuse_scale) {
          if (range_mask) mask_range(g, s, i0, mq, j0, nk, S);
        } else {
          transform_scores(p, g, s, h, i0, mq, j0, nk, range_mask, S, nullptr);
        }

        // Online softmax, one row at a time (the row is 1-8 vectors: it stays in L1).
        for (int64_t r = 0; r < mq; ++r) {
          const float* z = S + r * kBK;
          R vm = Vec::set1(-__builtin_inff());
          for (int64_t j = 0; j < nk; j += W) vm = Vec::max(vm, Vec::load(z + j));
          const float bm = Vec::hmax(vm) * zscale;
          const float m_new = bm > m[r] ? bm : m[r];
          // A row with nothing visible yet keeps m = -inf; subtracting 0 instead keeps
          // exp2 at exactly 0 (not NaN from -inf - -inf).
          const float m_use = m_new == -__builtin_inff() ? 0.0f : m_new;
          // An unchanged max (most rows, most blocks) rescales by exactly 1: no exp2f call.
          alpha[r] = m_new == m[r] && m_use == m_new ? 1.0f : exp2f(m[r] - m_use);
          const R nmv = Vec::set1(-m_use);
          R vs = Vec::zero();
          // Dropout scales P V only: the row sum l (the softmax's normaliser) takes every P.
          if (drop) dropout_row(p, s, h, i0 + r, j0, nk, Mrow);
          for (int64_t j = 0; j < nk; j += W) {
            R e = Vec::exp2_fast(Vec::fmadd(Vec::load(z + j), zs, nmv));
            vs = Vec::add(vs, e);
            if (drop) e = Vec::mul(e, Vec::load(Mrow + j));
#if FA_DPBF16
            if constexpr (DP)
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + r * kBK + j), (__m256i)_mm512_cvtneps_pbh(e));
            else
#endif
              Vec::store(reinterpret_cast<float*>(P) + r * kBK + j, e);
          }
          l[r] = l[r] * alpha[r] + Vec::hsum(vs);
          m[r] = m_new;
        }
#if FA_DPBF16
        if constexpr (DP) gemm_bf16(mq, g.Dvp, nk / 2, P, kBK, Vb, 2 * g.Dvp, O, g.Dvp, kScaleAdd, alpha, kNoStair, stair);
        else
#endif
          gemm_f32(mq, g.Dvp, nk, reinterpret_cast<const float*>(P), kBK, 1,
                   reinterpret_cast<const float*>(Vb), g.Dvp, O, g.Dvp, kScaleAdd, alpha, kNoStair, stair);
      }

      for (int64_t r = 0; r < mq; ++r) {
        const int64_t row = s.q0 + i0 + r;
        // No visible key: output 0 and LSE +inf (flash-attn's convention).
        const bool empty = l[r] == 0.0f;
        const float inv = empty ? 0.0f : 1.0f / l[r];
        f32_to_row<DT>(O + r * g.Dvp, g.Dv, inv, elem_ptr_mut(p.out, esz, s.tb, h, row), p.out.sd);
        p.lse[s.tb * p.lse_sb + h * p.lse_sh + row * p.lse_sl] =
            empty ? __builtin_inff() : (m[r] + log2f(l[r])) * kLn2;
      }
    }
    free(Qb); free(S); free(P); free(O); free(m); free(l); free(alpha); free(Mrow);
  }
  free(kvbuf);
  free(units);
  free(kb_off);
}

}  // namespace

void attention_fwd(const AttnParams& p) { FA_BY_DTYPE(p.dtype, fwd_typed, p) }

// ==================================================================== backward

namespace {

// Rows whose log2-domain LSE is at least this large in magnitude get their softmax
// statistics recomputed by the backward pass instead of read from the LSE: at that size
// the fp32 LSE = m + log2(l) no longer resolves log2(l) to fp32 accuracy (at |LSE| >= 2^24
// it loses it entirely), so P = 2^(z - LSE) would be off by up to the factor l. Only huge
// additive mask values put a row there (finfo.min on every key of a padded row, say);
// ordinary logits stay far below it, so the recomputation is rare.
constexpr float kRecomputeLse2 = 1024.0f;

// The sequence (and its local row index *i) of tensor row `row` of batch entry tb.
FA_INLINE Seq seq_of_row(const AttnParams& p, const Geo& g, int64_t tb, int64_t row, int64_t* i) {
  int64_t b = tb;
  if (g.varlen) {
    b = 0;
    while (b + 1 < g.nseq && p.cu_seqlens_q[b + 1] <= row) ++b;
  }
  const Seq s = seq_of(p, g, b);
  *i = row - s.q0;
  return s;
}

// Softmax statistics of query row i of head h, computed as the forward pass computes them:
// *m = the row's largest log2-domain logit, *inv_l = 1 / sum_j 2^(z_j - m), so that
// P_j = 2^(z_j - m) * inv_l exactly at any magnitude of m. q is the row in fp32 (D values);
// S is scratch for kBK floats.
template <int DT>
void row_stats(const AttnParams& p, const Geo& g, const Seq& s, int64_t h, int64_t i, const float* q,
               float* S, float* m_out, float* inv_l_out) {
  const int esz = DT == kF32 ? 4 : 2;
  const int64_t hk = h / g.group;
  const float ninf = -__builtin_inff();
  int64_t lo, hi;
  row_range(g, s, i, &lo, &hi);
  float m = ninf, l = 0.0f;
  for (int64_t j0 = imax(lo, 0) / kBK * kBK; j0 <= hi; j0 += kBK) {
    const int64_t nk = imin(kBK, round_up(s.lk - j0, 16));
    for (int64_t jj = 0; jj < nk; ++jj) {
      float acc = 0.0f;
      if (j0 + jj < s.lk) {
        const void* kr = elem_ptr(p.k, esz, s.tb, hk, s.k0 + j0 + jj);
        for (int64_t d = 0; d < g.D; ++d) acc += q[d] * load_elem<DT>(kr, d * p.k.sd);
      }
      S[jj] = acc;
    }
    transform_scores(p, g, s, h, i, 1, j0, nk, needs_range_mask(g, s, i, i + 1, j0, nk), S, nullptr);
    for (int64_t jj = 0; jj < nk; ++jj) {
      const float z = S[jj];
      if (z == ninf) continue;  // hidden key (and no -inf - -inf)
      if (z > m) {
        l = m == ninf ? 0.0f : l * exp2f(m - z);
        m = z;
      }
      l += exp2f(z - m);  // NaN logits propagate through l
    }
  }
  *m_out = m;
  *inv_l_out = l > 0.0f ? 1.0f / l : 0.0f;
}

template <int DT>
void bwd_typed(const AttnParams& p) {
  // With VDPBF16PS and bf16 inputs, the three products whose operands are the bf16 inputs
  // themselves (S = Q K^T, dP = dO V^T) or dS rounded to bf16 (dQ = dS K, as flash-attn
  // rounds dS) use bf16 dot products; dV += P^T dO and dK += dS^T Q stay in fp32.
  constexpr bool DP = FA_DPBF16 && DT == kBF16;
  const Geo g = make_geo(p);
  const int esz = DT == kF32 ? 4 : 2;
  const int nt = num_threads_for(p);
  const int64_t rows_per_head = p.seqlen_q;  // total rows with varlen
  const int64_t n_rows = p.batch * g.Hq * rows_per_head;
  const int64_t Dp = g.Dp, Dvp = g.Dvp;

  // fp32 copies of Q and dO (padded), rowsum(dO * O), LSE * log2 e, and the fp32 dQ
  // accumulator, all row-indexed by ((tb * Hq + h) * rows_per_head + row).
  float* Qf = alloc<float>(n_rows * Dp);
  float* dOf = alloc<float>(n_rows * Dvp);
  float* delta = alloc<float>(n_rows);
  float* lse2 = alloc<float>(n_rows);
  float* pscale = alloc<float>(n_rows);  // P = 2^(z - lse2) * pscale; 1 except recomputed rows
  float* dq_acc = alloc<float>(n_rows * Dp);
  const int64_t Dv2 = round_up(g.Dv, 2);
  uint16_t* Qh = DP ? alloc<uint16_t>(n_rows * g.D2) : nullptr;  // bf16 Q rows, even length
  uint16_t* dOh = DP ? alloc<uint16_t>(n_rows * Dv2) : nullptr;

  int64_t n_kblocks = 0;
  for (int64_t b = 0; b < g.nseq; ++b) n_kblocks += cdiv(seq_of(p, g, b).lk, kBK);
  // Whole heads as the unit of work (no dQ sharing, deterministic) when there are enough
  // of them to balance the threads; otherwise single key blocks, with dQ under a lock.
  const bool whole_heads = p.deterministic || g.nseq * g.Hk >= 4 * nt ||
                           (!g.varlen && (g.nseq * g.Hk) % nt == 0);
  int64_t n_units = whole_heads ? g.nseq * g.Hk : n_kblocks * g.Hk;
  int64_t* units = alloc<int64_t>(3 * n_units);  // (sequence, key block begin, end)
  {
    int64_t u = 0;
    if (whole_heads) {
      for (int64_t b = 0; b < g.nseq; ++b) {
        const int64_t nkb = cdiv(seq_of(p, g, b).lk, kBK);
        for (int64_t hk = 0; hk < g.Hk; ++hk, ++u) {
          units[3 * u] = b; units[3 * u + 1] = 0; units[3 * u + 2] = nkb;
        }
      }
    } else {
      for (int64_t b = 0; b < g.nseq; ++b) {
        const int64_t nkb = cdiv(seq_of(p, g, b).lk, kBK);
        for (int64_t kb = 0; kb < nkb; ++kb)
          for (int64_t hk = 0; hk < g.Hk; ++hk, ++u) {
            units[3 * u] = b; units[3 * u + 1] = kb; units[3 * u + 2] = kb + 1;
          }
      }
    }
    n_units = u;
  }
  omp_lock_t* locks = nullptr;
  if (!whole_heads) {
    locks = alloc<omp_lock_t>(p.batch * g.Hq);
    for (int64_t i = 0; i < p.batch * g.Hq; ++i) omp_init_lock(&locks[i]);
  }

#pragma omp parallel num_threads(nt)
  {
    float* Srow = alloc<float>(kBK);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < n_rows; ++row) {
      const int64_t l_ = row % rows_per_head, bh = row / rows_per_head;
      const int64_t h = bh % g.Hq, tb = bh / g.Hq;
      row_to_f32<DT>(elem_ptr(p.q, esz, tb, h, l_), p.q.sd, g.D, Dp, Qf + row * Dp);
      row_to_f32<DT>(elem_ptr(p.dout, esz, tb, h, l_), p.dout.sd, g.Dv, Dvp, dOf + row * Dvp);
      const void* orow = elem_ptr(p.out, esz, tb, h, l_);
      float acc = 0.0f;
      for (int64_t d = 0; d < g.Dv; ++d) acc += dOf[row * Dvp + d] * load_elem<DT>(orow, d * p.out.sd);
      delta[row] = acc;
      const float lse = p.lse[tb * p.lse_sb + h * p.lse_sh + l_ * p.lse_sl];
      lse2[row] = lse * kLog2e;
      pscale[row] = 1.0f;
      if (__builtin_isfinite(lse) && !(fabsf(lse2[row]) < kRecomputeLse2)) {
        int64_t i;
        const Seq s = seq_of_row(p, g, tb, l_, &i);
        if (i >= 0 && i < s.lq) row_stats<DT>(p, g, s, h, i, Qf + row * Dp, Srow, &lse2[row], &pscale[row]);
      }
      for (int64_t d = 0; d < Dp; ++d) dq_acc[row * Dp + d] = 0.0f;
      if constexpr (DP) {
        const uint16_t* qr = static_cast<const uint16_t*>(elem_ptr(p.q, esz, tb, h, l_));
        const uint16_t* dor = static_cast<const uint16_t*>(elem_ptr(p.dout, esz, tb, h, l_));
        for (int64_t d = 0; d < g.D2; ++d) Qh[row * g.D2 + d] = d < g.D ? qr[d * p.q.sd] : 0;
        for (int64_t d = 0; d < Dv2; ++d) dOh[row * Dv2 + d] = d < g.Dv ? dor[d * p.dout.sd] : 0;
      }
    }
    free(Srow);

    float* Kt = alloc<float>(g.D * kBK);
    float* Kp = alloc<float>(kBK * Dp);
    float* Vt = alloc<float>(g.Dv * kBK);
    float* dK = alloc<float>(kBK * Dp);
    float* dV = alloc<float>(kBK * Dvp);
    float* S = alloc<float>(kBQ * kBK);
    float* dS = alloc<float>(kBQ * kBK);
    float* G = g.softcap > 0.0f ? alloc<float>(kBQ * kBK) : nullptr;
    float* dQt = alloc<float>(kBQ * Dp);
    const bool drop = p.dropout_p > 0.0f;
    float* Md = drop ? alloc<float>(kBQ * kBK) : nullptr;  // dropout's 0 or 1 / (1 - p)
    float* Pd = drop ? alloc<float>(kBQ * kBK) : nullptr;  // P with dropout applied
    // bf16 operands: K pairs along d [D2/2][kBK][2], V pairs along dv [Dv2/2][kBK][2],
    // K pairs along keys [kBK/2][Dp][2], and dS in bf16.
    uint16_t* K2 = DP ? alloc<uint16_t>(g.D2 * kBK) : nullptr;
    uint16_t* V2 = DP ? alloc<uint16_t>(Dv2 * kBK) : nullptr;
    uint16_t* Kk2 = DP ? alloc<uint16_t>(kBK * Dp) : nullptr;
    uint16_t* dSh = DP ? alloc<uint16_t>(kBQ * kBK) : nullptr;

#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_units; ++w) {
      // Units enumerate kv heads innermost in both modes.
      const int64_t b = units[3 * w], kb_begin = units[3 * w + 1], kb_end = units[3 * w + 2];
      const int64_t head_k = w % g.Hk;
      const Seq s = seq_of(p, g, b);
      for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
        const int64_t j0 = kb * kBK;
        const int64_t nvalid = imin(kBK, s.lk - j0);
        const int64_t nk = imin(kBK, round_up(nvalid, 16));
        // Pack K^T, K and V^T of this block (fp32, zero past the keys and dims).
        for (int64_t i = 0; i < g.D * kBK; ++i) Kt[i] = 0.0f;
        for (int64_t i = 0; i < g.Dv * kBK; ++i) Vt[i] = 0.0f;
        for (int64_t jj = 0; jj < kBK; ++jj) {
          if (jj < nvalid) {
            const void* kr = elem_ptr(p.k, esz, s.tb, head_k, s.k0 + j0 + jj);
            row_to_f32<DT>(kr, p.k.sd, g.D, Dp, Kp + jj * Dp);
            for (int64_t d = 0; d < g.D; ++d) Kt[d * kBK + jj] = Kp[jj * Dp + d];
            const void* vr = elem_ptr(p.v, esz, s.tb, head_k, s.k0 + j0 + jj);
            for (int64_t d = 0; d < g.Dv; ++d) Vt[d * kBK + jj] = load_elem<DT>(vr, d * p.v.sd);
          } else {
            for (int64_t d = 0; d < Dp; ++d) Kp[jj * Dp + d] = 0.0f;
          }
        }
        if constexpr (DP) {
          memset(K2, 0, sizeof(uint16_t) * g.D2 * kBK);
          memset(V2, 0, sizeof(uint16_t) * Dv2 * kBK);
          memset(Kk2, 0, sizeof(uint16_t) * kBK * Dp);
          for (int64_t jj = 0; jj < nvalid; ++jj) {
            const uint16_t* kr = static_cast<const uint16_t*>(elem_ptr(p.k, esz, s.tb, head_k, s.k0 + j0 + jj));
            const uint16_t* vr = static_cast<const uint16_t*>(elem_ptr(p.v, esz, s.tb, head_k, s.k0 + j0 + jj));
            for (int64_t d = 0; d < g.D; ++d) {
              const uint16_t x = kr[d * p.k.sd];
              K2[((d >> 1) * kBK + jj) * 2 + (d & 1)] = x;
              Kk2[((jj >> 1) * Dp + d) * 2 + (jj & 1)] = x;
            }
            for (int64_t d = 0; d < g.Dv; ++d) V2[((d >> 1) * kBK + jj) * 2 + (d & 1)] = vr[d * p.v.sd];
          }
        }
        memset(dK, 0, sizeof(float) * kBK * Dp);
        memset(dV, 0, sizeof(float) * kBK * Dvp);

        // Query rows that see any of these keys.
        int64_t ilo = 0, ihi = s.lq - 1;
        if (g.wr >= 0) ilo = imax(ilo, j0 - s.off - g.wr);
        if (g.wl >= 0) ihi = imin(ihi, j0 + nvalid - 1 - s.off + g.wl);
        for (int64_t gi = 0; gi < g.group && ilo <= ihi; ++gi) {
          const int64_t h = head_k * g.group + gi;
          const int64_t head_row0 = (s.tb * g.Hq + h) * rows_per_head + s.q0;
          for (int64_t qb = ilo / kBQ; qb * kBQ <= ihi; ++qb) {
            const int64_t i0 = qb * kBQ, mq = imin(kBQ, s.lq - i0);
            const float* Qr = Qf + (head_row0 + i0) * Dp;
            const float* dOr = dOf + (head_row0 + i0) * Dvp;
            const float* lr = lse2 + head_row0 + i0;
            const float* ps = pscale + head_row0 + i0;
            const float* dr = delta + head_row0 + i0;

#if FA_DPBF16
            if constexpr (DP) gemm_bf16(mq, nk, g.D2 / 2, Qh + (head_row0 + i0) * g.D2, g.D2, K2, 2 * kBK, S, kBK, kSet, nullptr);
            else
#endif
              gemm_f32(mq, nk, g.D, Qr, Dp, 1, Kt, kBK, S, kBK, kSet, nullptr);
            transform_scores(p, g, s, h, i0, mq, j0, nk, needs_range_mask(g, s, i0, i0 + mq, j0, nk), S, G);
            for (int64_t r = 0; r < mq; ++r) {
              // P = 2^(z - LSE log2 e); LSE = +inf (row sees nothing) gives exactly 0.
              const R lv = Vec::set1(lr[r]);
              float* z = S + r * kBK;
              for (int64_t j = 0; j < nk; j += W) Vec::store(z + j, Vec::exp2(Vec::sub(Vec::load(z + j), lv)));
              if (ps[r] != 1.0f) {  // a recomputed row: lr is its max, ps its 1 / sum
                const R c = Vec::set1(ps[r]);
                for (int64_t j = 0; j < nk; j += W) Vec::store(z + j, Vec::mul(Vec::load(z + j), c));
              }
              if (drop) {  // the forward's mask, redrawn from the counters
                float* mr = Md + r * kBK;
                dropout_row(p, s, h, i0 + r, j0, nk, mr);
                for (int64_t j = 0; j < nk; j += W) Vec::store(Pd + r * kBK + j, Vec::mul(Vec::load(z + j), Vec::load(mr + j)));
              }
            }
            // dV += Pd^T dO  (A(m = key, k = row) = Pd[row][key]; Pd = P without dropout).
            gemm_f32(nk, Dvp, mq, drop ? Pd : S, 1, kBK, dOr, Dvp, dV, Dvp, kAdd, nullptr);
            // dP = dO V^T.
#if FA_DPBF16
            if constexpr (DP) gemm_bf16(mq, nk, Dv2 / 2, dOh + (head_row0 + i0) * Dv2, Dv2, V2, 2 * kBK, dS, kBK, kSet, nullptr);
            else
#endif
              gemm_f32(mq, nk, g.Dv, dOr, Dvp, 1, Vt, kBK, dS, kBK, kSet, nullptr);
            for (int64_t r = 0; r < mq; ++r) {
              const R dv = Vec::set1(dr[r]);
              float* ds = dS + r * kBK;
              const float* pr = S + r * kBK;
              const float* mr = drop ? Md + r * kBK : nullptr;
              for (int64_t j = 0; j < nk; j += W) {
                // dS = P (dP - delta), where dP of the dropped-out probabilities is dO V^T
                // times the mask (delta = rowsum(dO * O) already holds the dropout).
                const R dpv = mr ? Vec::mul(Vec::load(ds + j), Vec::load(mr + j)) : Vec::load(ds + j);
                R x = Vec::mul(Vec::load(pr + j), Vec::sub(dpv, dv));
                if (G) x = Vec::mul(x, Vec::load(G + r * kBK + j));
                Vec::store(ds + j, x);
#if FA_DPBF16
                if constexpr (DP)
                  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dSh + r * kBK + j), (__m256i)_mm512_cvtneps_pbh(x));
#endif
              }
            }
            // dK += dS^T Q (scaled at the end); dQ += scale * dS K.
            gemm_f32(nk, Dp, mq, dS, 1, kBK, Qr, Dp, dK, Dp, kAdd, nullptr);
#if FA_DPBF16
            if constexpr (DP) gemm_bf16(mq, Dp, nk / 2, dSh, kBK, Kk2, 2 * Dp, dQt, Dp, kSet, nullptr);
            else
#endif
              gemm_f32(mq, Dp, nk, dS, kBK, 1, Kp, Dp, dQt, Dp, kSet, nullptr);
            if (locks) omp_set_lock(&locks[s.tb * g.Hq + h]);
            float* dqr = dq_acc + (head_row0 + i0) * Dp;
            const R sc = Vec::set1(g.scale);
            for (int64_t i = 0; i < mq * Dp; i += W)
              Vec::store(dqr + i, Vec::fmadd(sc, Vec::load(dQt + i), Vec::load(dqr + i)));
            if (locks) omp_unset_lock(&locks[s.tb * g.Hq + h]);
          }
        }
        for (int64_t jj = 0; jj < nvalid; ++jj) {
          const int64_t row = s.k0 + j0 + jj;
          f32_to_row<DT>(dK + jj * Dp, g.D, g.scale, elem_ptr_mut(p.dk, esz, s.tb, head_k, row), p.dk.sd);
          f32_to_row<DT>(dV + jj * Dvp, g.Dv, 1.0f, elem_ptr_mut(p.dv, esz, s.tb, head_k, row), p.dv.sd);
        }
      }
    }
    free(Kt); free(Kp); free(Vt); free(dK); free(dV); free(S); free(dS); free(G); free(dQt); free(Md); free(Pd);
    free(K2); free(V2); free(Kk2); free(dSh);

#pragma omp for schedule(static)
    for (int64_t row = 0; row < n_rows; ++row) {
      const int64_t l_ = row % rows_per_head, bh = row / rows_per_head;
      f32_to_row<DT>(dq_acc + row * Dp, g.D, 1.0f, elem_ptr_mut(p.dq, esz, bh / g.Hq, bh % g.Hq, l_), p.dq.sd);
    }
  }
  if (locks) {
    for (int64_t i = 0; i < p.batch * g.Hq; ++i) omp_destroy_lock(&locks[i]);
    free(locks);
  }
  free(units);
  free(Qf); free(dOf); free(delta); free(lse2); free(pscale); free(dq_acc); free(Qh); free(dOh);
}

}  // namespace

void attention_bwd(const AttnParams& p) { FA_BY_DTYPE(p.dtype, bwd_typed, p) }

#undef FA_INLINE

}  // namespace fastattn::cpu::FA_ISA
