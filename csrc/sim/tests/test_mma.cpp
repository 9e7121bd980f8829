// The tensor-core wrappers of csrc/cuda/common (mma.cuh, ldmatrix.cuh, cp_async.cuh) in the
// host SIMT build, checked element by element against the PTX ISA's layout tables:
//   mma:      PTX ISA 9.7.14.5.8 (section "Matrix Fragments for mma.m16n8k16 with floating
//             point type"), figures for A (.row), B (.col) and C/D (f32);
//   ldmatrix: PTX ISA 9.7.14.5.15 (section "Warp-level matrix load instruction: ldmatrix"),
//             the fragment-of-a-matrix table (.x1/.x2/.x4, .trans);
// and a 64x64x64 GEMM assembled from cp_async + ldmatrix + mma against a double matmul.
// Each table is spelled out here independently of the wrappers' code.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "common/cp_async.cuh"
#include "common/ldmatrix.cuh"
#include "common/mma.cuh"

namespace fc = fastattn::cuda;
using fc::launch;

namespace {

// Element (row, col) of the test operands: small integers, so every product and sum is exact.
float a_val(int r, int c) { return static_cast<float>(((r * 7 + c * 3) % 9) - 4); }
float b_val(int k, int n) { return static_cast<float>(((k * 5 + n * 11) % 7) - 3); }
float c_val(int r, int n) { return static_cast<float>(r * 8 + n) * 0.5f; }

template <typename T>
uint32_t pack_host(float lo, float hi) {
  return uint32_t(T(lo).__x) | (uint32_t(T(hi).__x) << 16);
}

// Each lane builds its fragments from the table and writes its D elements where the table puts them.
template <typename T>
__global__ void mma_layout_kernel(float* d_out) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t a[4], b[2];
  a[0] = pack_host<T>(a_val(g, 2 * t), a_val(g, 2 * t + 1));
  a[1] = pack_host<T>(a_val(g + 8, 2 * t), a_val(g + 8, 2 * t + 1));
  a[2] = pack_host<T>(a_val(g, 2 * t + 8), a_val(g, 2 * t + 9));
  a[3] = pack_host<T>(a_val(g + 8, 2 * t + 8), a_val(g + 8, 2 * t + 9));
  b[0] = pack_host<T>(b_val(2 * t, g), b_val(2 * t + 1, g));
  b[1] = pack_host<T>(b_val(2 * t + 8, g), b_val(2 * t + 9, g));
  const float c[4] = {c_val(g, 2 * t), c_val(g, 2 * t + 1), c_val(g + 8, 2 * t), c_val(g + 8, 2 * t + 1)};
  float d[4];
  fc::mma_m16n8k16<T>(d, a, b, c);
  d_out[g * 8 + 2 * t] = d[0];
  d_out[g * 8 + 2 * t + 1] = d[1];
  d_out[(g + 8) * 8 + 2 * t] = d[2];
  d_out[(g + 8) * 8 + 2 * t + 1] = d[3];
}

template <typename T>
void check_mma_layout(const char* name) {
  std::vector<float> d(16 * 8, NAN);
  launch(mma_layout_kernel<T>, dim3(1), dim3(32), 0, nullptr, d.data());
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float want = c_val(r, n);
      for (int k = 0; k < 16; ++k) want += a_val(r, k) * b_val(k, n);
      FA_CHECK(d[r * 8 + n] == want, "%s D[%d][%d] = %f, want %f", name, r, n, d[r * 8 + n], want);
    }
}

FA_TEST(mma_m16n8k16_f16_layout) { check_mma_layout<__half>("f16"); }
FA_TEST(mma_m16n8k16_bf16_layout) { check_mma_layout<__nv_bfloat16>("bf16"); }

// 4 matrices of 8x8 16-bit elements, element (m, r, c) = m*64 + r*8 + c, rows 16 bytes apart
// but laid out in shuffled order so that the addresses, not the layout, decide the result.
int row_slot(int m, int r) { return ((m * 8 + r) * 13) % 32; }

template <int N, bool Trans>
__global__ void ldmatrix_kernel(const uint16_t* rows_global, uint32_t* out) {
  __align__(16) __shared__ uint16_t smem[32 * 8];
  const int lane = threadIdx.x;
  for (int i = 0; i < 8; ++i) smem[lane * 8 + i] = rows_global[lane * 8 + i];
  __syncwarp();
  const int m = lane / 8, r = lane % 8;
  const void* addr = &smem[row_slot(m, r) * 8];
  uint32_t regs[N];
  if constexpr (N == 1 && !Trans) fc::ldmatrix_x1(regs, addr);
  if constexpr (N == 2 && !Trans) fc::ldmatrix_x2(regs, addr);
  if constexpr (N == 4 && !Trans) fc::ldmatrix_x4(regs, addr);
  if constexpr (N == 1 && Trans) fc::ldmatrix_x1_trans(regs, addr);
  if constexpr (N == 2 && Trans) fc::ldmatrix_x2_trans(regs, addr);
  if constexpr (N == 4 && Trans) fc::ldmatrix_x4_trans(regs, addr);
  for (int j = 0; j < N; ++j) out[lane * N + j] = regs[j];
  __syncwarp();
}

template <int N, bool Trans>
void check_ldmatrix(const char* name) {
  std::vector<uint16_t> rows(32 * 8);
  for (int m = 0; m < 4; ++m)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) rows[row_slot(m, r) * 8 + c] = static_cast<uint16_t>(m * 64 + r * 8 + c);
  std::vector<uint32_t> out(32 * N, 0xdeadbeefu);
  launch(ldmatrix_kernel<N, Trans>, dim3(1), dim3(32), 0, nullptr, rows.data(), out.data());
  for (int i = 0; i < 32; ++i)
    for (int m = 0; m < N; ++m) {
      // The table: lane i holds (row i/4, cols 2*(i%4), 2*(i%4)+1); .trans: of the transpose.
      const int r = i / 4, c0 = 2 * (i % 4);
      const uint32_t lo = Trans ? m * 64 + c0 * 8 + r : m * 64 + r * 8 + c0;
      const uint32_t hi = Trans ? m * 64 + (c0 + 1) * 8 + r : m * 64 + r * 8 + c0 + 1;
      const uint32_t want = lo | (hi << 16);
      FA_CHECK(out[i * N + m] == want, "%s lane %d matrix %d: %08x, want %08x", name, i, m, out[i * N + m], want);
    }
}

FA_TEST(ldmatrix_x1) { check_ldmatrix<1, false>("x1"); }
FA_TEST(ldmatrix_x2) { check_ldmatrix<2, false>("x2"); }
FA_TEST(ldmatrix_x4) { check_ldmatrix<4, false>("x4"); }
FA_TEST(ldmatrix_x1_trans) { check_ldmatrix<1, true>("x1.trans"); }
FA_TEST(ldmatrix_x2_trans) { check_ldmatrix<2, true>("x2.trans"); }
FA_TEST(ldmatrix_x4_trans) { check_ldmatrix<4, true>("x4.trans"); }

// cp.async of 4, 8 and 16 bytes, the zero-filling form included (src-size 0 reads nothing).
__global__ void cp_async_kernel(const uint8_t* src, uint8_t* dst) {
  __align__(16) __shared__ uint8_t smem[3 * 32 * 16];
  const int t = threadIdx.x;
  const bool valid = t % 3 != 0;
  fc::cp_async_zfill<4>(&smem[t * 4], valid ? &src[t * 4] : nullptr, valid);
  fc::cp_async_commit();
  fc::cp_async_zfill<8>(&smem[128 + t * 8], valid ? &src[128 + t * 8] : nullptr, valid);
  fc::cp_async<16>(&smem[384 + t * 16], &src[384 + t * 16]);
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 28; ++i) dst[t * 28 + i] = smem[t * 28 + i];
}

FA_TEST(cp_async_4_8_16_zfill) {
  std::vector<uint8_t> src(896), dst(896, 0xcc);
  for (int i = 0; i < 896; ++i) src[i] = static_cast<uint8_t>(i * 7 + 1) | 1u;  // never 0
  launch(cp_async_kernel, dim3(1), dim3(32), 0, nullptr, src.data(), dst.data());
  for (int i = 0; i < 896; ++i) {
    int owner = -1;
    if (i < 128) owner = i / 4;
    else if (i < 384) owner = (i - 128) / 8;
    const bool zero = i < 384 && owner % 3 == 0;
    FA_CHECK(dst[i] == (zero ? 0 : src[i]), "byte %d: %d, want %d", i, dst[i], zero ? 0 : src[i]);
  }
}

// C (64x64, fp32) = A (64x64, row-major) * B (64x64, row-major K x N): 4 warps, 16 rows each.
// A fragments by ldmatrix_x4; B fragments by ldmatrix_x4_trans from the row-major K x N tile
// (two n-tiles of 8 per load).
constexpr int kG = 64;
template <typename T>
__global__ void gemm_kernel(const T* a, const T* b, float* c) {
  __align__(16) __shared__ T sa[kG * kG];
  __align__(16) __shared__ T sb[kG * kG];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int chunk = tid; chunk < kG * kG / 8; chunk += blockDim.x) {
    fc::cp_async<16>(&sa[chunk * 8], &a[chunk * 8]);
    fc::cp_async<16>(&sb[chunk * 8], &b[chunk * 8]);
  }
  fc::cp_async_commit();
  fc::cp_async_wait<0>();
  __syncthreads();
  float acc[kG / 8][4] = {};
  for (int k0 = 0; k0 < kG; k0 += 16) {
    uint32_t af[4];
    fc::ldmatrix_x4(af, &sa[(warp * 16 + lane % 16) * kG + k0 + (lane / 16) * 8]);
    for (int n0 = 0; n0 < kG; n0 += 16) {
      uint32_t bf[4];
      fc::ldmatrix_x4_trans(bf, &sb[(k0 + lane % 16) * kG + n0 + (lane / 16) * 8]);
      const uint32_t b_lo[2] = {bf[0], bf[1]}, b_hi[2] = {bf[2], bf[3]};
      fc::mma_m16n8k16<T>(acc[n0 / 8], af, b_lo);
      fc::mma_m16n8k16<T>(acc[n0 / 8 + 1], af, b_hi);
    }
  }
  const int g = lane >> 2, t = lane & 3, row = warp * 16 + g;
  for (int j = 0; j < kG / 8; ++j) {
    c[row * kG + j * 8 + 2 * t] = acc[j][0];
    c[row * kG + j * 8 + 2 * t + 1] = acc[j][1];
    c[(row + 8) * kG + j * 8 + 2 * t] = acc[j][2];
    c[(row + 8) * kG + j * 8 + 2 * t + 1] = acc[j][3];
  }
}

template <typename T>
void check_gemm(const char* name) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<T> a(kG * kG), b(kG * kG);
  for (auto& x : a) x = T(dist(rng));
  for (auto& x : b) x = T(dist(rng));
  std::vector<float> c(kG * kG, NAN);
  launch(gemm_kernel<T>, dim3(1), dim3(128), 0, nullptr, a.data(), b.data(), c.data());
  for (int i = 0; i < kG; ++i)
    for (int j = 0; j < kG; ++j) {
      double want = 0, mag = 0;
      for (int k = 0; k < kG; ++k) {
        const double p = double(float(a[i * kG + k])) * double(float(b[k * kG + j]));
        want += p;
        mag += std::fabs(p);
      }
      // fp32 accumulation of exact products: rounding error <= k * 2^-24 * sum|p|.
      const double tol = kG * 6e-8 * mag + 1e-6;
      FA_CHECK(std::fabs(c[i * kG + j] - want) <= tol, "%s C[%d][%d] = %f, want %f", name, i, j, c[i * kG + j],
               want);
    }
}

FA_TEST(gemm_64x64x64_f16) { check_gemm<__half>("f16"); }
FA_TEST(gemm_64x64x64_bf16) { check_gemm<__nv_bfloat16>("bf16"); }

}  // namespace
