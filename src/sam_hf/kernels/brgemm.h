// Products on ATen's brgemm (oneDNN's ukernel) for sam_hf's CPU kernels, fp32 and bf16: the calls, the bf16 operands'
// rounding and VNNI packing, and the kernels' input checks.
#pragma once
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <vector>

#include "simd.h"

namespace sam_hf_brgemm {

// C (M x N, row stride ldc) (+)= A (M x K, lda) B (K x N, ldb), all row-major fp32.
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
}

// The same with bf16 operands and fp32 C: A row-major, B in VNNI form, the (K, N) matrix as [K / 2][N][2] (pairs of
// rows interleaved, K even; ldb counts columns, as for a row-major B of N columns).
inline void gemm(int64_t m, int64_t n, int64_t k, const at::BFloat16* a, int64_t lda, const at::BFloat16* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, true);
}

// The bf16 products' operands. dst (rows, ldd) = src (rows, cols; row stride lds) rounded, columns cols .. ldd zero
// (a left operand whose K is padded to even).
inline void round_rows(const float* src, int64_t rows, int64_t cols, int64_t lds, at::BFloat16* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ldd; c += 16) {
      const mask16 lanes = sam_hf_simd::lanes_below(ldd - c);
      sam_hf_simd::store16(dst + r * ldd + c, lanes, sam_hf_simd::load16(src + r * lds + c, sam_hf_simd::lanes_below(cols - c) & lanes));
    }
}

#if defined(__AVX512F__)
// A right operand B (K, N) in VNNI form, [ceil(K/2)][N][2] (pairs of rows interleaved; odd K: a zero row added), from
// K rows of N values (row stride ld): fp32 ones rounded, or bf16 ones as they are.
inline void pack_vnni(const float* src, int64_t k, int64_t n, int64_t ld, at::BFloat16* dst) {
  for (int64_t r = 0; r < k; r += 2) {
    const float* first = src + r * ld;
    uint32_t* out = reinterpret_cast<uint32_t*>(dst) + (r / 2) * n;
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 lanes = sam_hf_simd::lanes_below(n - c);
      const __m512 second = r + 1 < k ? _mm512_maskz_loadu_ps(lanes, first + ld + c) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(out + c, lanes, sam_hf_simd::bf16_pairs(_mm512_maskz_loadu_ps(lanes, first + c), second));
    }
  }
}

inline __mmask32 lanes_below32(int64_t count) {  // the first min(count, 32) of 32 lanes
  return count >= 32 ? ~__mmask32(0) : (__mmask32(1) << count) - 1;
}

inline void pack_vnni(const at::BFloat16* src, int64_t k, int64_t n, int64_t ld, at::BFloat16* dst) {
  alignas(64) static const uint16_t kLow[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHigh[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                 24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i low = _mm512_load_si512(kLow), high = _mm512_load_si512(kHigh);
  for (int64_t r = 0; r < k; r += 2) {
    const at::BFloat16* first = src + r * ld;
    at::BFloat16* out = dst + r * n;  // row pair r / 2: n words of two values
    for (int64_t c = 0; c < n; c += 32) {  // 32 columns: their words in two vectors of 16
      const int64_t count = std::min<int64_t>(32, n - c);
      const __m512i u = _mm512_maskz_loadu_epi16(lanes_below32(count), first + c);
      const __m512i v = r + 1 < k ? _mm512_maskz_loadu_epi16(lanes_below32(count), first + ld + c) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi16(out + 2 * c, lanes_below32(2 * count), _mm512_permutex2var_epi16(u, low, v));
      if (count > 16) _mm512_mask_storeu_epi16(out + 2 * c + 32, lanes_below32(2 * (count - 16)), _mm512_permutex2var_epi16(u, high, v));
    }
  }
}

#else  // AVX2 builds: bf16 products never run there (`bf16_brgemm_usable()`); scalar, for the build alone
inline void pack_vnni(const float* src, int64_t k, int64_t n, int64_t ld, at::BFloat16* dst) {
  for (int64_t r = 0; r < k; r += 2)
    for (int64_t c = 0; c < n; ++c) {
      dst[(r / 2 * n + c) * 2] = at::BFloat16(src[r * ld + c]);
      dst[(r / 2 * n + c) * 2 + 1] = at::BFloat16(r + 1 < k ? src[(r + 1) * ld + c] : 0.0f);
    }
}

inline void pack_vnni(const at::BFloat16* src, int64_t k, int64_t n, int64_t ld, at::BFloat16* dst) {
  for (int64_t r = 0; r < k; r += 2)
    for (int64_t c = 0; c < n; ++c) {
      dst[(r / 2 * n + c) * 2] = src[r * ld + c];
      dst[(r / 2 * n + c) * 2 + 1] = r + 1 < k ? src[(r + 1) * ld + c] : at::BFloat16(0.0f);
    }
}
#endif

// B = src^T (K, N) in VNNI form from N rows of K fp32 values (row stride ld), K even: word (k / 2, j) holds src[j][k],
// src[j][k + 1] rounded.
inline void pack_vnni_transposed(const float* src, int64_t n, int64_t k, int64_t ld, at::BFloat16* dst) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t w = 0; w < k / 2; ++w) {
      dst[(w * n + j) * 2] = at::BFloat16(src[j * ld + 2 * w]);
      dst[(w * n + j) * 2 + 1] = at::BFloat16(src[j * ld + 2 * w + 1]);
    }
}

// Ends a thread's run of bf16 products (oneDNN's AMX tiles are released; nothing to do without AMX).
inline void release(const float*) {}
inline void release(const at::BFloat16*) { at::native::cpublas::brgemm_release(true); }

// Whether ATen's fp32 brgemm serves this CPU: one tiny product checked against its known result.
inline bool brgemm_usable() {
  try {
    const float a[4] = {1.0f, 2.0f, 3.0f, 4.0f};  // (2, 2)
    float b[2 * 16], c[2 * 16];
    for (int j = 0; j < 16; ++j) {
      b[j] = static_cast<float>(j);
      b[16 + j] = 1.0f;
    }
    gemm(2, 16, 2, a, 2, b, 16, c, 16, false);
    for (int j = 0; j < 16; ++j)
      if (c[j] != j + 2.0f || c[16 + j] != 3.0f * j + 4.0f) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// Whether its bf16 brgemm with VNNI-packed B serves this CPU (oneDNN's ukernel, which needs at least AVX512-BF16):
// the CPU has AVX512-BF16 (the kernels' own bf16 conversions use it, simd.h) and the same product runs in bf16.
inline bool bf16_brgemm_usable() {
#if !defined(__AVX512F__)
  return false;  // an AVX2 build: its bf16 conversions are scalar (simd.h); the AVX-512 build serves bf16
#else
  if (!__builtin_cpu_supports("avx512bf16")) return false;
  try {
    const at::BFloat16 a[4] = {at::BFloat16(1.0f), at::BFloat16(2.0f), at::BFloat16(3.0f), at::BFloat16(4.0f)};
    std::vector<at::BFloat16> b(2 * 16);  // VNNI: b[2 * j + k] = B[k][j], B[0][j] = j, B[1][j] = 1
    for (int j = 0; j < 16; ++j) {
      b[2 * j] = at::BFloat16(static_cast<float>(j));
      b[2 * j + 1] = at::BFloat16(1.0f);
    }
    float c[2 * 16];
    gemm(2, 16, 2, a, 2, b.data(), 16, c, 16, false);
    release(a);
    for (int j = 0; j < 16; ++j)
      if (c[j] != j + 2.0f || c[16 + j] != 3.0f * j + 4.0f) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
#endif
}

// A kernel's bf16 path runs AVX512-BF16 instructions (simd.h): on a CPU without them, or in an AVX2 build, it raises
// instead of stopping the process with an illegal instruction (sam_hf routes bf16 there only after `bf16_usable()`;
// this guards direct calls).
inline void check_bf16_cpu(const char* kernel) {
#if defined(__AVX512F__)
  TORCH_CHECK(__builtin_cpu_supports("avx512bf16"), kernel, ": bf16 inputs need a CPU with AVX512-BF16, which this one "
              "lacks; pass fp32 (see bf16_usable())");
#else
  TORCH_CHECK(false, kernel, ": this is its AVX2 build, which takes fp32 only; bf16 inputs need its AVX-512 build on a CPU "
              "with AVX512-BF16 (see bf16_usable())");
#endif
}

// `t` must be a contiguous CPU tensor of `dtype` with `dim` dimensions; the error names the kernel and the argument.
inline void check_dense(const at::Tensor& t, const char* kernel, const char* name, int64_t dim, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu() && t.is_contiguous() && t.dim() == dim, kernel, ": ", name,
              " must be a contiguous ", dtype == at::kBFloat16 ? "bf16" : dtype == at::kFloat ? "fp32" : c10::toString(dtype),
              " CPU tensor with ", dim, " dimensions, got ", t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (not contiguous)");
}

inline void check_float(const at::Tensor& t, const char* kernel, const char* name, int64_t dim) {
  check_dense(t, kernel, name, dim, at::kFloat);
}

}  // namespace sam_hf_brgemm
