// Vector wrappers for the CPU attention and decoding kernels: one struct `Vec` per
// instruction set, chosen by FA_VEC_BITS (512 or 256) in the translation unit that
// includes this file after its `#pragma GCC target`. Included only from impl_common.h,
// inside the per-ISA namespace, so each instruction set gets its own copies.
//
// Vec::MR is the micro-kernel's register-blocked row count: the fp32 micro-kernel keeps
// MR x 2 accumulators plus 2 B vectors and 1 broadcast live, which must fit the register
// file (AVX-512: 8 x 2 + 3 = 19 of 32 zmm; AVX2: 6 x 2 + 3 = 15 of 16 ymm).

// The members both widths share, spelt with the intrinsics' prefix P (_mm512 or _mm256)
// for register type RT of WIDTH floats and MR_ micro-kernel rows: element-wise arithmetic,
// and 2^f for |f| <= 1/2 by its degree-7 Taylor series in f*ln2 (truncation error < 1e-8
// relative), the polynomial part of each width's exp2. max(a, x) returns x when x is NaN
// (x86 MAXPS returns its second operand then).
#define FA_VEC_COMMON(P, RT, WIDTH, MR_)                                          \
  using R = RT;                                                                   \
  static constexpr int W = WIDTH;                                                 \
  static constexpr int MR = MR_;                                                  \
  static FA_INLINE R load(const float* p) { return P##_loadu_ps(p); }             \
  static FA_INLINE void store(float* p, R v) { P##_storeu_ps(p, v); }             \
  static FA_INLINE R set1(float x) { return P##_set1_ps(x); }                     \
  static FA_INLINE R zero() { return P##_setzero_ps(); }                          \
  static FA_INLINE R fmadd(R a, R b, R c) { return P##_fmadd_ps(a, b, c); }       \
  static FA_INLINE R mul(R a, R b) { return P##_mul_ps(a, b); }                   \
  static FA_INLINE R add(R a, R b) { return P##_add_ps(a, b); }                   \
  static FA_INLINE R sub(R a, R b) { return P##_sub_ps(a, b); }                   \
  static FA_INLINE R max(R a, R x) { return P##_max_ps(a, x); }                   \
  /* Horner's rule for the coefficients c (highest degree first). */            \
  template <int N>                                                                \
  static FA_INLINE R horner(R f, const float (&c)[N]) {                           \
    R p = set1(c[0]);                                                             \
    _Pragma("GCC unroll 8") for (int i = 1; i < N; ++i) p = fmadd(p, f, set1(c[i])); \
    return p;                                                                     \
  }                                                                               \
  static FA_INLINE R exp2_poly(R f) {                                             \
    static constexpr float c[8] = {1.525273380405984e-05f, 1.5403530393381606e-04f, \
                                   1.3333558146428443e-03f, 9.618129107628477e-03f, \
                                   5.550410866482158e-02f, 2.402265069591007e-01f,  \
                                   6.931471805599453e-01f, 1.0f};                  \
    return horner(f, c);                                                          \
  }                                                                               \
  /* 2^f for |f| <= 1/2 by a degree-5 near-minimax polynomial (relative error     \
     2.4e-7 evaluated in fp32, about 2 ulp): two FMAs fewer than exp2_poly, for   \
     the forward's softmax (where fp32 rounding of the products and sums is of    \
     that order anyway). */                                                       \
  static FA_INLINE R exp2_poly5(R f) {                                            \
    static constexpr float c[6] = {1.3276471737e-03f, 9.6755415401e-03f,          \
                                   5.5507132761e-02f, 2.4022119720e-01f,          \
                                   6.9314696706e-01f, 1.0000000717f};             \
    return horner(f, c);                                                          \
  }

#if FA_VEC_BITS == 512

struct Vec {
  FA_VEC_COMMON(_mm512, __m512, 16, 8)
  static FA_INLINE float hmax(R v) { return _mm512_reduce_max_ps(v); }
  static FA_INLINE float hsum(R v) { return _mm512_reduce_add_ps(v); }
  // 2^x: x = n + f with n = round(x), |f| <= 1/2; 2^f by exp2_poly, 2^n applied by
  // VSCALEFPS, which underflows cleanly to 0. x is first clamped at -160 (2^-160 rounds
  // to 0, and -inf would make f NaN); the clamp keeps NaN.
  // exp2_fast: the same with exp2_poly5 (the forward's softmax).
  template <bool FAST = false>
  static FA_INLINE R exp2(R x) {
    x = _mm512_max_ps(_mm512_set1_ps(-160.0f), x);
    const R n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = _mm512_sub_ps(x, n);
    return _mm512_scalef_ps(FAST ? exp2_poly5(f) : exp2_poly(f), n);
  }
  static FA_INLINE R exp2_fast(R x) { return exp2<true>(x); }
};

#elif FA_VEC_BITS == 256

struct Vec {
  FA_VEC_COMMON(_mm256, __m256, 8, 6)
  static FA_INLINE float hmax(R v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static FA_INLINE float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // 2^x as in the AVX-512 version, with 2^n built in the exponent bits: x is clamped at
  // -126 so n + 127 stays a normal exponent, and lanes below -126 (2^x < 1.2e-38, -inf
  // included) are zeroed afterwards so masked scores give exactly 0. NaN propagates.
  template <bool FAST = false>
  static FA_INLINE R exp2(R x) {
    const R lo = set1(-126.0f);
    const R tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, x);
    const R n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const R f = _mm256_sub_ps(x, n);
    const R p = FAST ? exp2_poly5(f) : exp2_poly(f);
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
  static FA_INLINE R exp2_fast(R x) { return exp2<true>(x); }
};

#else
#error "FA_VEC_BITS must be 512 or 256"
#endif

#undef FA_VEC_COMMON
